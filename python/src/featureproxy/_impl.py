"""Which core runs the sync client: the native one (``featureproxy_native``, the Rust client under
PyO3) when it is installed, else the pure-Python one.

``FEATUREPROXY_IMPL`` chooses, read once at import:

- ``auto`` (or unset): native if ``featureproxy_native`` imports and matches this package's
  version, else Python. It does not import on free-threaded CPython (abi3 modules cannot load
  there) nor where no build exists; Python runs then.
- ``native``: native, or ImportError saying why not (as psycopg's ``PSYCOPG_IMPL`` does).
- ``python``: the pure-Python core, even when the native one is installed.

``featureproxy.__impl__`` is ``"native"`` or ``"python"``: what ``Client`` runs on. A client given
a ready ``ssl.SSLContext`` (``tls=ctx``) runs on the Python core (OpenSSL; see ``Client``);
``Client.impl`` says per client.
"""

from __future__ import annotations

import os
import warnings

VERSION = "0.1.0"
CHOICES = ("auto", "python", "native")

native = None  # the featureproxy_native module, when it runs
name = "python"


def _load():
    want = os.environ.get("FEATUREPROXY_IMPL", "").strip().lower() or "auto"
    if want not in CHOICES:
        raise ImportError(f"FEATUREPROXY_IMPL={want!r}: it must be one of {', '.join(CHOICES)}")
    if want == "python":
        return None
    try:
        import featureproxy_native as mod
    except ImportError as e:
        if want == "native":
            raise ImportError(
                "FEATUREPROXY_IMPL=native, but the native core cannot be imported "
                f"({e}): install it with `pip install ./python/native` (needs a Rust toolchain); "
                "free-threaded CPython cannot load it"
            ) from e
        return None
    got = getattr(mod, "__version__", None)
    if got != VERSION:
        why = f"featureproxy_native {got} does not match featureproxy {VERSION}: reinstall both from one checkout"
        if want == "native":
            raise ImportError(f"FEATUREPROXY_IMPL=native, but {why}")
        warnings.warn(f"{why}; using the pure-Python core", RuntimeWarning, stacklevel=3)
        return None
    return mod


native = _load()
name = "native" if native is not None else "python"
