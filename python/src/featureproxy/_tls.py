"""TLS for both clients: the client's SSLContext, the sync client's TLS channel over memory BIOs,
and the one place that turns what OpenSSL reports into a :class:`TLSError` saying what to do."""

from __future__ import annotations

import socket
import ssl
import threading
import time

from .errors import TLSError

ALPN = "featureproxy/1"
# Appended to a plaintext client's HELLO failures: a TLS port answers plaintext that way.
PLAINTEXT_HINT = " (if this is the proxy's TLS port, pass tls=True or ca_file=)"
_RECV_SIZE = 256 * 1024
_RECORD = 16384  # the most plaintext one TLS record carries


class TLSConfig:
    """What a client needs to open TLS connections: the context, the name the server's
    certificate is verified against, and what the error messages quote."""

    __slots__ = ("context", "server_hostname", "ca_file", "client_cert", "client_key", "custom")

    def __init__(
        self, context: ssl.SSLContext, server_hostname: str, ca_file, client_cert, custom: bool, client_key=None
    ):
        self.context = context
        self.server_hostname = server_hostname
        self.ca_file = ca_file
        self.client_cert = client_cert
        self.client_key = client_key
        self.custom = custom  # the caller's own SSLContext: we do not know its files (nor can the native core use it)

    def error(self, e: BaseException, address: str) -> TLSError:
        return tls_error(e, self, address)

    def closed_hint(self) -> str:
        """Appended to a HELLO that failed by a close or reset without a TLS alert (the alert may
        have been lost to a RST): what a refused client certificate looks like then."""
        if self.custom:
            return " (right after the TLS handshake: the proxy may have refused the client's certificate, or its lack)"
        if self.client_cert is None:
            return (
                " (right after the TLS handshake: a proxy with client_ca_file does this to a client without a "
                "certificate; then pass client_cert= and client_key=)"
            )
        return (
            f" (right after the TLS handshake: a proxy with client_ca_file does this when it refuses "
            f"client_cert={self.client_cert!r})"
        )


def config(
    tls, ca_file, client_cert, client_key, server_hostname, host: str, address: str
) -> TLSConfig | None:
    """The TLSConfig for a client's TLS arguments, or None for plaintext.

    ``tls`` is a bool or a ready ``ssl.SSLContext`` (used as is). Any of ``ca_file``,
    ``client_cert``, ``client_key``, ``server_hostname`` implies ``tls=True``. Files that cannot
    be loaded raise TLSError naming the argument."""
    files = ca_file is not None or client_cert is not None or client_key is not None
    if isinstance(tls, ssl.SSLContext):
        if files:
            raise ValueError(
                "pass either a ready SSLContext as tls= or ca_file=/client_cert=/client_key=, not both "
                "(load the files into the context yourself)"
            )
        if tls.protocol == ssl.PROTOCOL_TLS_SERVER:
            raise ValueError(
                "tls= is a server-side SSLContext (PROTOCOL_TLS_SERVER); a client needs PROTOCOL_TLS_CLIENT"
            )
        return TLSConfig(tls, server_hostname or host, None, None, custom=True)
    if not isinstance(tls, bool):
        raise TypeError(f"tls must be a bool or an ssl.SSLContext, not {type(tls).__name__}")
    if not (tls or files or server_hostname is not None):
        return None
    if client_key is not None and client_cert is None:
        raise ValueError("client_key= was given without client_cert=: pass both (the certificate and its key)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise TLSError(
            f"featureproxy {address}: cannot load ca_file={ca_file!r} ({why}): it must be a PEM file of the "
            f"CA certificates that may sign the proxy's certificate",
            "ca_file",
        ) from e
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols([ALPN])
    if client_cert is not None:
        try:
            ctx.load_cert_chain(client_cert, client_key)
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise TLSError(
                f"featureproxy {address}: cannot load client_cert={client_cert!r}, client_key={client_key!r} "
                f"({why}): they must be PEM files of a certificate and its private key",
                "client_cert",
            ) from e
    return TLSConfig(ctx, server_hostname or host, ca_file, client_cert, custom=False, client_key=client_key)


# ---- the one mapping from what OpenSSL reports to what the caller should know

# X509_V_ERR_* codes (openssl/x509_vfy.h)
_UNTRUSTED = {2, 18, 19, 20, 21}  # unable to get issuer / self-signed / unable to verify leaf
_EXPIRED = 10
_NOT_YET_VALID = 9
_NAME_MISMATCH = {62, 63, 64}  # hostname, email, IP address mismatch

# Alerts the server sends when it refuses the client's certificate (or lack of one).
_CERT_REQUIRED = {"TLSV13_ALERT_CERTIFICATE_REQUIRED"}
_CERT_REFUSED = {
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV1_ALERT_DECRYPT_ERROR",
}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
_VERSION = {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"}


def tls_error(e: BaseException, cfg: TLSConfig, address: str) -> TLSError:
    """The TLSError for what went wrong while connecting over TLS (``e``: an ssl.SSLError, or
    socket.timeout for a handshake that did not finish in time)."""
    where = f"featureproxy {address}: TLS"
    if cfg.custom:
        trusted = "a CA the SSLContext passed as tls= trusts"
    elif cfg.ca_file is None:
        trusted = "a CA in the system's trusted roots (ca_file=None)"
    else:
        trusted = f"a CA in ca_file={cfg.ca_file!r}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return TLSError(
            f"{where}: no TLS handshake within the timeout: is {address} the proxy's TLS port "
            f"([server.tls] listen), and is it answering?",
            "timeout",
        )
    if isinstance(e, ssl.SSLCertVerificationError):
        code, detail = e.verify_code, e.verify_message or getattr(e, "reason", None) or str(e)
        if code == _EXPIRED:
            return TLSError(
                f"{where}: the server's certificate expired ({detail}): the proxy's cert_file must be "
                f"renewed (or this machine's clock is wrong)",
                "expired",
            )
        if code == _NOT_YET_VALID:
            return TLSError(
                f"{where}: the server's certificate is not valid yet ({detail}): check the clocks of this "
                f"machine and the proxy's",
                "not_yet_valid",
            )
        if code in _NAME_MISMATCH:
            return TLSError(
                f"{where}: hostname mismatch: verified against {cfg.server_hostname!r}, which the server's "
                f"certificate does not name ({detail}): connect by a name the certificate names, or pass "
                f"server_hostname= one it names",
                "hostname_mismatch",
            )
        if code in _UNTRUSTED:
            return TLSError(
                f"{where}: the server's certificate is not signed by {trusted} ({detail}): pass the CA "
                f"that signed the proxy's certificate as ca_file=",
                "untrusted_server",
            )
        return TLSError(f"{where}: the server's certificate failed verification: {detail}", "verification")
    if isinstance(e, ssl.SSLError):
        reason = getattr(e, "reason", None) or ""
        if reason in _CERT_REQUIRED or (
            cfg.client_cert is None and not cfg.custom and reason in _CERT_REFUSED | {"SSLV3_ALERT_HANDSHAKE_FAILURE"}
        ):
            return TLSError(
                f"{where}: the server requires a client certificate signed by its CA: pass client_cert= "
                f"and client_key= ({reason or e})",
                "client_cert_required",
            )
        if reason in _CERT_REFUSED:
            what = f"client_cert={cfg.client_cert!r}" if cfg.client_cert else "the client certificate"
            return TLSError(
                f"{where}: the server refused {what} ({reason}): it must be signed by a CA in the proxy's "
                f"client_ca_file, valid now, and usable for client authentication",
                "client_cert_refused",
            )
        if reason in _NOT_TLS:
            return TLSError(
                f"{where}: the server does not speak TLS ({reason}): is {address} the proxy's TLS port "
                f"([server.tls] listen) rather than its plaintext listen?",
                "not_tls",
            )
        if reason in _VERSION:
            return TLSError(
                f"{where}: no TLS version in common with the server ({reason}); this client requires TLS 1.2 "
                f"or newer",
                "version",
            )
        if reason == "TLSV1_ALERT_NO_APPLICATION_PROTOCOL":
            return TLSError(
                f"{where}: the server refused the application protocol {ALPN!r} offered by ALPN ({reason})",
                "alpn",
            )
        if isinstance(e, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
            return TLSError(
                f"{where}: the server closed the connection during the TLS handshake ({reason or e}): "
                f"if it requires a client certificate, pass client_cert= and client_key=",
                "closed",
            )
        return TLSError(f"{where}: handshake failed ({reason or e})", "other")
    return TLSError(f"{where}: handshake failed ({e})", "other")


# ---- the sync client's channel


class Closed(Exception):
    """The server closed the connection (EOF before the handshake finished)."""


class Channel:
    """TLS over a connected socket shared by threads: ``ssl.SSLObject`` on two memory BIOs.

    The TLS state (the SSLObject and both BIOs) is touched only under ``_tls_lock``, held for
    the OpenSSL call and never across socket I/O. Bytes leave the outgoing BIO only under
    ``send_lock``, which is held until they are on the socket, so records reach the wire in the
    order OpenSSL made them, whichever thread made them. One thread at a time reads
    (``decrypt``): the connection's reader role guarantees that.
    """

    __slots__ = ("sock", "obj", "inc", "out", "send_lock", "_tls_lock", "closed")

    def __init__(self, sock: socket.socket, cfg: TLSConfig, send_lock: threading.Lock):
        self.sock = sock
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = cfg.context.wrap_bio(self.inc, self.out, server_side=False, server_hostname=cfg.server_hostname)
        self.send_lock = send_lock
        self._tls_lock = threading.Lock()
        self.closed = False  # the server's close_notify arrived

    def handshake(self, deadline: float) -> None:
        """Completes the handshake before ``deadline`` (time.monotonic()); single-threaded, at
        connect. Raises ssl.SSLError, socket.timeout, Closed or OSError.

        The client's last flight stays in the outgoing BIO, to leave with the first ``sendall``
        (the HELLO) in one TCP write: a server that refuses the client's certificate (which TLS
        1.3 tells only after the client's handshake is done) then has read all the client sent
        when it closes, so its kernel sends FIN and not a RST that would destroy its alert."""
        sock = self.sock
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                return
            out = self.out.read()
            if out:
                sock.sendall(out)
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            sock.settimeout(left)
            data = sock.recv(_RECV_SIZE)
            if not data:
                raise Closed()
            self.inc.write(data)

    def sendall(self, data) -> None:
        """Encrypts ``data`` and sends it whole (thread-safe). Raises OSError (ssl.SSLError too)."""
        with self.send_lock:
            with self._tls_lock:
                self.obj.write(data)
                out = self.out.read()
            self.sock.sendall(out)
        # Bytes another thread's TLS call made while this one held send_lock go now.
        self.flush()

    def _send_rest(self) -> None:
        # Under send_lock: sends what is in the outgoing BIO.
        while True:
            with self._tls_lock:
                out = self.out.read()
            if not out:
                return
            self.sock.sendall(out)

    def flush(self) -> None:
        """Sends what is left in the outgoing BIO, unless another thread is sending: that one
        sends it after its own bytes (it looks again after letting go of ``send_lock``)."""
        while True:
            with self._tls_lock:
                if not self.out.pending:
                    return
            if not self.send_lock.acquire(blocking=False):
                return
            try:
                self._send_rest()
            finally:
                self.send_lock.release()

    def decrypt(self, data: bytes) -> bytes:
        """Feeds bytes read from the socket and returns all the plaintext they complete (maybe
        none), so none is left inside OpenSSL where poll() cannot see it. Sets ``closed`` on the
        server's close_notify. Raises ssl.SSLError for a broken stream or a fatal alert."""
        chunks = []
        with self._tls_lock:
            inc, obj = self.inc, self.obj
            inc.write(data)
            try:
                # A read gives at most one record's plaintext; when neither OpenSSL nor the BIO
                # holds more, another would only raise SSLWantReadError.
                while True:
                    chunk = obj.read(_RECORD)
                    if not chunk:  # the server's close_notify
                        self.closed = True
                        break
                    chunks.append(chunk)
                    if not inc.pending and not obj.pending():
                        break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.closed = True
            pending = self.out.pending  # e.g. a KeyUpdate answered
        if pending:
            self.flush()
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def close_notify(self) -> None:
        """Best effort, never blocking: tells the server this side is done (so it does not log an
        unexpected EOF). Skipped when another thread is sending."""
        if not self.send_lock.acquire(blocking=False):
            return
        try:
            with self._tls_lock:
                try:
                    self.obj.unwrap()
                except ssl.SSLError:
                    pass  # SSLWantReadError: the server's close_notify is not awaited
                out = self.out.read()
            if out:
                self.sock.send(out, socket.MSG_DONTWAIT)
        except (OSError, ValueError):
            pass
        finally:
            self.send_lock.release()
