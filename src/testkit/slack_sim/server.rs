//! The simulator's network side: one loopback listener serving the Web API under `/api/` and
//! Socket Mode websockets under `/link/`, on a dedicated thread with its own Tokio runtime (so
//! it works the same from `#[tokio::test]`, `#[actix_rt::test]` and plain threads).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::api::{self, Credentials};
use super::state::{ConnCmd, ConnState, ConnectionInfo, LiveConn, SimState};

/// State shared between the server tasks and the [`super::SlackSim`] handle.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<SimState>,
    changed: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(state: SimState) -> Self {
        Self {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
        }
    }

    /// Runs `f` on the state and wakes every waiter.
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut SimState) -> R) -> R {
        let result = f(&mut self.state.lock());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        result
    }

    /// Reads the state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&SimState) -> R) -> R {
        f(&self.state.lock())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

pub(crate) type Body = Full<Bytes>;

fn json_response(status: u16, body: &Value, retry_after: Option<u64>) -> Response<Body> {
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8");
    if let Some(secs) = retry_after {
        builder = builder.header(header::RETRY_AFTER, secs.to_string());
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"{}"))))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// Accepts connections until the runtime shuts down.
pub(crate) async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "sim: cannot register listener");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "sim: accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(shared, req).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%error, "sim: http connection ended with an error");
            }
        });
    }
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/link") {
        return upgrade(shared, req);
    }
    if let Some(id) = path.strip_prefix("/commands/") {
        return super::commands::response_url(shared, id.to_owned(), req).await;
    }
    if let Some(file_id) = path.strip_prefix("/upload/") {
        return upload(shared, file_id.to_owned(), req).await;
    }
    match path.strip_prefix("/api/") {
        Some(method) => api_call(shared, method.trim_start_matches('/').to_owned(), req).await,
        None => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The upload URL of `files.getUploadURLExternal`: takes the file's bytes once, as Slack's
/// does (`OK - <length>` in text).
async fn upload(shared: Arc<Shared>, file_id: String, req: Request<Incoming>) -> Response<Body> {
    if req.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST the file's bytes");
    }
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return plain(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    let stored = shared.mutate(|st| match st.uploads.get_mut(&file_id) {
        Some(upload) if upload.content.is_none() => {
            upload.content = Some(body.to_vec());
            Ok(body.len())
        }
        Some(_) => Err((StatusCode::CONFLICT, "already uploaded")),
        None => Err((StatusCode::NOT_FOUND, "unknown upload")),
    });
    match stored {
        Ok(len) => {
            let mut resp = Response::new(Full::new(Bytes::from(format!("OK - {len}"))));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        Err((status, why)) => plain(status, why),
    }
}

fn query_params(query: Option<&str>) -> Map<String, Value> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

fn credentials(req: &Request<Incoming>) -> Credentials {
    let mut creds = Credentials::default();
    if let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = value.strip_prefix("Bearer ") {
            creds.bearer = Some(token.trim().to_owned());
        } else if let Some(b64) = value.strip_prefix("Basic ")
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim())
            && let Ok(text) = String::from_utf8(decoded)
            && let Some((id, secret)) = text.split_once(':')
        {
            creds.basic = Some((id.to_owned(), secret.to_owned()));
        }
    }
    creds
}

async fn api_call(shared: Arc<Shared>, method: String, req: Request<Incoming>) -> Response<Body> {
    let mut params = query_params(req.uri().query());
    let creds = credentials(&req);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return plain(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    if !body.is_empty() {
        if content_type.starts_with("application/json") {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(obj)) => params.extend(obj),
                _ => {
                    return json_response(
                        200,
                        &json!({"ok": false, "error": "invalid_json"}),
                        None,
                    );
                }
            }
        } else {
            params.extend(query_params(std::str::from_utf8(&body).ok()));
        }
    }
    let reply = shared.mutate(|st| api::handle(st, &method, &creds, params));
    json_response(reply.status, &reply.body, reply.retry_after)
}

fn upgrade(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    let ticket = query_params(req.uri().query())
        .get("ticket")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (Some(accept), true) = (key, is_upgrade) else {
        return plain(StatusCode::BAD_REQUEST, "websocket upgrade required");
    };
    // Tickets are single use, like Slack's.
    let Some(app_id) = ticket.and_then(|t| shared.mutate(|st| st.tickets.remove(&t))) else {
        return plain(StatusCode::UNAUTHORIZED, "invalid ticket");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                run_connection(shared, app_id, ws).await;
            }
            Err(error) => tracing::warn!(%error, "sim: websocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "bad response"))
}

/// Registers a connection and sends `hello` (or the refusal), then queued envelopes.
fn open_connection(st: &mut SimState, app_id: &str, tx: mpsc::UnboundedSender<ConnCmd>) -> u64 {
    let id = st.connections.len() as u64 + 1;
    let host = st.host(id);
    st.connections.push(ConnectionInfo {
        id,
        app_id: app_id.to_owned(),
        host: host.clone(),
        state: ConnState::Open,
        end_reason: None,
    });
    st.live.insert(id, LiveConn { tx });
    let open = st.open_count(app_id);
    if st.link_disabled {
        st.disconnect(id, "link_disabled");
    } else if open > st.config.max_connections {
        let frame = json!({
            "type": "disconnect",
            "reason": "too_many_websockets",
            "num_connections": open - 1,
            "debug_info": {"host": host},
            "connection_info": {"app_id": app_id}
        });
        if let Some(c) = st.connections.iter_mut().find(|c| c.id == id) {
            c.state = ConnState::Disconnecting;
            c.end_reason = Some("disconnect:too_many_websockets".into());
        }
        st.send_frame(id, frame, true);
    } else {
        let hello = json!({
            "type": "hello",
            "num_connections": open,
            "debug_info": {
                "host": host,
                "build_number": 1,
                "approximate_connection_time": 18060
            },
            "connection_info": {"app_id": app_id}
        });
        st.send_frame(id, hello, false);
        st.flush_pending(app_id);
    }
    id
}

async fn run_connection<S>(shared: Arc<Shared>, app_id: String, mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn_id = shared.mutate(|st| open_connection(st, &app_id, tx));
    let reason = loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    shared.mutate(|st| st.on_client_frame(conn_id, text.as_str()));
                }
                // Pings are answered by tungstenite itself (the pong goes out on the next read).
                // The close handshake's reply (queued by tungstenite) goes out before the drop.
                Some(Ok(Message::Close(_))) => {
                    let _ = ws.flush().await;
                    break "client_closed";
                }
                None => break "client_closed",
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::debug!(conn_id, %error, "sim: websocket error");
                    break "error";
                }
            },
            cmd = rx.recv() => match cmd {
                Some(ConnCmd::Frame(text)) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break "send_failed";
                    }
                }
                Some(ConnCmd::FrameThenClose(text)) => {
                    // Best effort: the client may already be gone.
                    let _ = ws.send(Message::text(text)).await;
                    let _ = ws.close(None).await;
                    // Keep reading briefly: late acks still count, and the close handshake ends.
                    let drain = async {
                        while let Some(Ok(msg)) = ws.next().await {
                            if let Message::Text(text) = msg {
                                shared.mutate(|st| st.on_client_frame(conn_id, text.as_str()));
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                    break "server_closed";
                }
                Some(ConnCmd::Drop) | None => break "dropped",
            },
        }
    };
    drop(ws);
    shared.mutate(|st| st.conn_closed(conn_id, reason));
}
