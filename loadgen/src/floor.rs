//! `loadgen floor`: the cheapest server of featureproxy's protocol v1 that `loadgen run` can
//! drive, the cost floor a proxy is compared against. One thread (a bare current-thread tokio
//! loop, one task per connection), one view, canned rows: every GET is answered FRESH, age 0,
//! with rows of zeros (the view's defaults), so whatever a proxy costs above this is what reading,
//! caching and assembling real rows costs.
//!
//! Per read it decodes every complete frame with `featureproxy-protocol` (the decoder the proxy
//! uses, so the floor pays the same parsing), appends every reply to one buffer and writes it
//! once. A GET reply for `n` entities is encoded once per connection and then copied with the
//! request id patched in. It stores nothing: PUT is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use featureproxy_protocol::{
    decode_frame, encode_get_response, get_response_len, Dtype, EntityStatus, ErrorCode,
    FeatureSpec, HelloReply, Limits, ProtocolError, Request, Response, SchemaReply, Status,
    VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The view the floor serves: its view id, as featureproxy numbers views by their position in
/// the config, is that of `user_features` in `examples/features.toml`.
pub const VIEW_ID: u16 = 1;
/// Any non-zero fingerprint will do: loadgen echoes what SCHEMA said.
const SCHEMA_ID: u32 = 0x666c_6f72;
/// Canned GET replies kept per connection, in bytes; larger batches are encoded each time.
const CANNED_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct FloorConfig {
    pub view: String,
    /// Row length: `row_bytes / 4` f32 features `f0, f1, ...` and, for a remainder, bool
    /// features `b0, ...`. 64 is `user_features` (16 x f32).
    pub row_bytes: u32,
}

struct View {
    name: String,
    schema: SchemaReply,
    limits: Limits,
    row: Vec<u8>,
}

impl FloorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=65_536).contains(&self.row_bytes) {
            return Err(format!(
                "--row-bytes {}: give 1..=65536 (64 is user_features, 16 x f32)",
                self.row_bytes
            ));
        }
        Ok(())
    }

    fn view(&self) -> Result<View, String> {
        self.validate()?;
        let limits = Limits::default();
        let feature = |dtype, name| FeatureSpec {
            dtype,
            name,
            default: [0; 8],
        };
        let features = (0..self.row_bytes / 4)
            .map(|j| feature(Dtype::F32, format!("f{j}")))
            .chain((0..self.row_bytes % 4).map(|j| feature(Dtype::Bool, format!("b{j}"))))
            .collect();
        Ok(View {
            name: self.view.clone(),
            schema: SchemaReply {
                view_id: VIEW_ID,
                schema_id: SCHEMA_ID,
                row_bytes: self.row_bytes,
                stale_after_ms: 120_000,
                max_staleness_ms: 600_000,
                features,
            },
            limits,
            row: vec![0; self.row_bytes as usize],
        })
    }
}

/// Binds the listening socket, so that a caller can report the address (port 0 picks one).
pub fn bind(listen: &str) -> Result<std::net::TcpListener, String> {
    let l = std::net::TcpListener::bind(listen).map_err(|e| {
        format!("cannot listen on {listen}: {e} (pick a free port, e.g. 127.0.0.1:0)")
    })?;
    l.set_nonblocking(true)
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    Ok(l)
}

/// Serves `listener` on the calling thread until the process ends.
pub fn serve(listener: std::net::TcpListener, cfg: &FloorConfig) -> Result<(), String> {
    let view = Arc::new(cfg.view()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("cannot register the listener: {e}"))?;
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(connection(s, view.clone()));
                }
                Err(e) => {
                    // Out of descriptors, usually: the clients see it; keep serving the others.
                    eprintln!("loadgen floor: accept failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    })
}

/// Starts a floor on a thread of its own (for tests and in-process use); returns its address.
pub fn start(listen: &str, cfg: FloorConfig) -> Result<SocketAddr, String> {
    cfg.validate()?;
    let l = bind(listen)?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("loadgen-floor".into())
        .spawn(move || serve(l, &cfg))
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    Ok(addr)
}

async fn connection(mut s: tokio::net::TcpStream, view: Arc<View>) {
    let _ = s.set_nodelay(true);
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut canned = Canned::default();
    let mut first = true;
    loop {
        if input.capacity() - input.len() < 16 * 1024 {
            input.reserve(64 * 1024);
        }
        match s.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut close = false;
        while !close {
            let frame = match decode_frame(&mut input, view.limits.max_frame) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err((id, e)) => {
                    Response::Error(e).encode(&mut out, id);
                    close = true;
                    break;
                }
            };
            let id = frame.request_id;
            let was_first = std::mem::replace(&mut first, false);
            let reply = match Request::decode(&frame, &view.limits) {
                Ok(Request::Get(g)) => {
                    match check_get(&view, g.view_id, g.schema_id, g.keys.len()) {
                        Ok(()) => {
                            canned.append(&view, g.keys.len(), id, &mut out);
                            continue;
                        }
                        Err(e) => Response::Error(e),
                    }
                }
                Ok(other) => answer(&view, other, was_first),
                Err(e) => Response::Error(e),
            };
            if let Response::Error(e) = &reply {
                close = e.code.closes_connection();
            }
            reply.encode(&mut out, id);
        }
        if s.write_all(&out).await.is_err() || close {
            return;
        }
        out.clear();
    }
}

/// The GET replies of one connection, indexed by entity count, each encoded the first time that
/// count is asked for (up to [`CANNED_BYTES`] in all).
#[derive(Default)]
struct Canned {
    replies: Vec<BytesMut>,
    bytes: usize,
}

impl Canned {
    fn append(&mut self, view: &View, n: usize, id: u32, out: &mut BytesMut) {
        if self.replies.len() <= n {
            self.replies.resize_with(n + 1, BytesMut::new);
        }
        if self.replies[n].is_empty() {
            let r = get_reply(view, n as u32);
            if self.bytes + r.len() > CANNED_BYTES {
                out.extend_from_slice(&r);
                patch_id(out, r.len(), id);
                return;
            }
            self.bytes += r.len();
            self.replies[n] = r;
        }
        let r = &self.replies[n];
        out.extend_from_slice(r);
        patch_id(out, r.len(), id);
    }
}

/// The reply to anything but a GET (which [`Canned`] answers).
fn answer(view: &View, request: Request, first: bool) -> Response {
    let error = |code, message: String| Response::Error(ProtocolError::new(code, message));
    match request {
        Request::Hello(_) if !first => error(
            ErrorCode::Malformed,
            "HELLO must be the first frame of a connection".into(),
        ),
        Request::Hello(h) if h.version != VERSION => error(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported; this server speaks 1",
                h.version
            ),
        ),
        Request::Hello(_) => Response::Hello(HelloReply {
            version: VERSION,
            shard: 0,
            max_frame: view.limits.max_frame,
            max_batch: view.limits.max_batch,
            server: format!("loadgen-floor/{}", env!("CARGO_PKG_VERSION")),
        }),
        Request::Ping => Response::Pong,
        Request::Schema { view: name } if name == view.name => {
            Response::Schema(view.schema.clone())
        }
        Request::Schema { view: name } => error(
            ErrorCode::UnknownView,
            format!(
                "this floor serves only the view {:?}, not {name:?}",
                view.name
            ),
        ),
        Request::Put(_) => error(
            ErrorCode::BackendUnavailable,
            "loadgen floor stores nothing and serves canned rows: seed the proxy instead".into(),
        ),
        Request::Get(_) => unreachable!("connection() answers GETs from Canned"),
    }
}

fn check_get(view: &View, view_id: u16, schema_id: u32, n: usize) -> Result<(), ProtocolError> {
    if view_id != VIEW_ID {
        return Err(ProtocolError::new(
            ErrorCode::UnknownView,
            format!("no view with id {view_id}; this floor serves view id {VIEW_ID}"),
        ));
    }
    if schema_id != 0 && schema_id != SCHEMA_ID {
        return Err(ProtocolError::new(
            ErrorCode::SchemaMismatch,
            format!(
                "schema_id {schema_id:#x} is not this view's {SCHEMA_ID:#x}: fetch SCHEMA again"
            ),
        ));
    }
    if get_response_len(n, view.row.len()) - 4 > view.limits.max_frame as usize {
        return Err(ProtocolError::new(
            ErrorCode::BatchTooLarge,
            format!("a reply for {n} entities would exceed max_frame; split the batch"),
        ));
    }
    Ok(())
}

/// The GET reply for `n` entities, request id 0: FRESH, age 0, the canned rows.
fn get_reply(view: &View, n: u32) -> BytesMut {
    let mut b = BytesMut::new();
    let statuses = vec![EntityStatus::new(Status::Fresh, false); n as usize];
    let ages = vec![0u32; n as usize];
    encode_get_response(
        &mut b,
        0,
        VIEW_ID,
        SCHEMA_ID,
        view.row.len() as u32,
        &statuses,
        &ages,
        (0..n).map(|_| &view.row[..]),
    );
    b
}

/// Writes `id` into the request id of the frame of `len` bytes that ends `out`.
fn patch_id(out: &mut BytesMut, len: usize, id: u32) {
    let at = out.len() - len;
    out[at + 8..at + 12].copy_from_slice(&id.to_le_bytes());
}
