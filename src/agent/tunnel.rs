//! A switched-protocol connection (a WebSocket) between the module and an
//! app process.
//!
//! After the app's 101 has gone to the module, each direction is relayed on
//! its own thread, frame by frame (docs/protocol.md, "Upgraded
//! connections"): this thread carries the client's `BODY`/`END` from the
//! module to the app, a scoped helper thread carries the app's to the
//! module. Blocking I/O on both, so a full socket one way never stops the
//! other way. The tunnel is over when the app's direction has ended and
//! the module's has ended or the module closed; a failure on either side
//! shuts both sockets down, which wakes the other thread. Neither
//! connection carries another request afterwards. A `RELEASE` from the app
//! (it handed the connection to threads of its own and returned) is passed
//! to the caller's `on_release`, not to the module.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use crate::protocol::{self, Connection, Message, encode_body_header};

/// How a tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// Both directions ended with `END`, or the module closed after the
    /// app's `END`.
    Cleanly,
    /// A connection failed or a peer broke the protocol.
    Broken(String),
}

/// Relays the tunnel of request `id` until both directions are over.
pub fn run(
    module: &mut Connection<UnixStream>,
    app: &mut Connection<UnixStream>,
    id: u32,
    on_release: &mut (dyn FnMut() + Send),
) -> Ended {
    let writers = module
        .get_ref()
        .try_clone()
        .and_then(|m| Ok((m, app.get_ref().try_clone()?)));
    let (to_module, to_app) = match writers {
        Ok(pair) => pair,
        Err(e) => return Ended::Broken(format!("cannot share the connections: {e}")),
    };
    // The request's PassengerMaxRequestTime no longer applies.
    if let Err(e) = app.get_ref().set_read_timeout(None) {
        return Ended::Broken(e.to_string());
    }
    std::thread::scope(|scope| {
        let from_app = scope.spawn(|| {
            let result = forward(app, &to_module, id, "the app", Some(on_release));
            if result.is_err() {
                let _ = to_module.shutdown(Shutdown::Both);
            }
            result
        });
        let from_module = forward(module, &to_app, id, "the module", None);
        if from_module.is_err() {
            let _ = to_app.shutdown(Shutdown::Both);
        }
        let from_app = from_app
            .join()
            .unwrap_or_else(|_| Err("the relay thread panicked".to_owned().into()));
        match (from_app, from_module) {
            (Ok(()), Ok(())) => Ended::Cleanly,
            // The module closes its connection once the app's END reached it.
            (Ok(()), Err(e)) if e.closed => Ended::Cleanly,
            // The app's side was shut down because the module's failed.
            (Err(from_app), Err(from_module)) if from_app.closed => {
                Ended::Broken(from_module.message)
            }
            (Err(e), _) | (_, Err(e)) => Ended::Broken(e.message),
        }
    })
}

/// Why one direction stopped early.
struct DirectionError {
    message: String,
    /// The sending side closed its connection between frames.
    closed: bool,
}

impl From<String> for DirectionError {
    fn from(message: String) -> Self {
        DirectionError {
            message,
            closed: false,
        }
    }
}

/// Copies one direction's frames from `from` to `to` until its `END`
/// (passed on) or an `ERROR` (passed on, and the tunnel fails). With
/// `on_release` (the app's direction), a `RELEASE` is handed to it.
fn forward(
    from: &mut Connection<UnixStream>,
    mut to: &UnixStream,
    id: u32,
    sender: &str,
    mut on_release: Option<&mut (dyn FnMut() + Send)>,
) -> Result<(), DirectionError> {
    let mut frame = Vec::new();
    loop {
        frame.clear();
        match from.read_frame() {
            Ok(Some((frame_id, msg))) if frame_id == id => match msg {
                Message::Body(data) => {
                    encode_body_header(id, data.len(), &mut frame);
                    frame.extend_from_slice(&data);
                }
                Message::End => {
                    Message::End.encode(id, &mut frame);
                    return write(&mut to, &frame);
                }
                Message::Release if on_release.is_some() => {
                    if let Some(on_release) = on_release.as_mut() {
                        on_release();
                    }
                    continue;
                }
                Message::Error { code, message } => {
                    let error = format!("{sender} ended the tunnel ({code}): {message}");
                    Message::Error { code, message }.encode(id, &mut frame);
                    let _ = write(&mut to, &frame);
                    return Err(error.into());
                }
                other => {
                    return Err(format!(
                        "{sender} sent an unexpected frame in a tunnel: type {:#04x}",
                        other.kind()
                    )
                    .into());
                }
            },
            Ok(Some((frame_id, _))) => {
                return Err(
                    format!("{sender} sent a frame of request {frame_id} in a tunnel").into(),
                );
            }
            Ok(None) => {
                return Err(DirectionError {
                    message: format!("{sender} closed the connection"),
                    closed: true,
                });
            }
            Err(protocol::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading {sender}: {e}").into()),
        }
        write(&mut to, &frame)?;
    }
}

fn write(to: &mut &UnixStream, frame: &[u8]) -> Result<(), DirectionError> {
    to.write_all(frame)
        .map_err(|e| format!("relaying a tunnel frame: {e}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a tunnel for request 7 between two socket pairs; returns the
    /// module's and the app's far ends and the tunnel's thread.
    fn start() -> (
        Connection<UnixStream>,
        Connection<UnixStream>,
        std::thread::JoinHandle<Ended>,
    ) {
        let (module_ours, module_peer) = UnixStream::pair().unwrap();
        let (app_ours, app_peer) = UnixStream::pair().unwrap();
        let tunnel = std::thread::spawn(move || {
            run(
                &mut Connection::new(module_ours),
                &mut Connection::new(app_ours),
                7,
                &mut || {},
            )
        });
        (
            Connection::new(module_peer),
            Connection::new(app_peer),
            tunnel,
        )
    }

    fn body(data: &[u8]) -> Message {
        Message::Body(data.to_vec())
    }

    #[test]
    fn each_direction_flows_until_its_end() {
        let (mut module, mut app, tunnel) = start();
        module.send(7, &body(b"from the client")).unwrap();
        assert_eq!(
            app.read_frame().unwrap(),
            Some((7, body(b"from the client")))
        );
        app.send(7, &body(b"from the app")).unwrap();
        assert_eq!(
            module.read_frame().unwrap(),
            Some((7, body(b"from the app")))
        );
        // The client's half close: the app may still answer.
        module.send(7, &Message::End).unwrap();
        assert_eq!(app.read_frame().unwrap(), Some((7, Message::End)));
        app.send(7, &body(b"last words")).unwrap();
        app.send(7, &Message::End).unwrap();
        assert_eq!(module.read_frame().unwrap(), Some((7, body(b"last words"))));
        assert_eq!(module.read_frame().unwrap(), Some((7, Message::End)));
        assert!(matches!(tunnel.join().unwrap(), Ended::Cleanly));
    }

    #[test]
    fn the_module_closing_after_the_apps_end_is_a_clean_end() {
        let (mut module, mut app, tunnel) = start();
        app.send(7, &Message::End).unwrap();
        assert_eq!(module.read_frame().unwrap(), Some((7, Message::End)));
        drop(module);
        assert!(matches!(tunnel.join().unwrap(), Ended::Cleanly));
        assert_eq!(app.read_frame().unwrap(), None, "the app's side is closed");
    }

    #[test]
    fn an_app_that_goes_away_closes_the_module_side() {
        let (mut module, app, tunnel) = start();
        drop(app);
        assert!(matches!(module.read_frame(), Ok(None) | Err(_)));
        assert!(matches!(tunnel.join().unwrap(), Ended::Broken(_)));
    }

    #[test]
    fn a_module_that_goes_away_closes_the_app_side() {
        let (module, mut app, tunnel) = start();
        drop(module);
        assert!(matches!(app.read_frame(), Ok(None) | Err(_)));
        assert!(matches!(tunnel.join().unwrap(), Ended::Broken(_)));
    }

    #[test]
    fn a_release_from_the_app_is_handed_over_not_relayed() {
        let (module_ours, module_peer) = UnixStream::pair().unwrap();
        let (app_ours, app_peer) = UnixStream::pair().unwrap();
        let (released_tx, released_rx) = std::sync::mpsc::channel();
        let tunnel = std::thread::spawn(move || {
            run(
                &mut Connection::new(module_ours),
                &mut Connection::new(app_ours),
                7,
                &mut || released_tx.send(()).unwrap(),
            )
        });
        let mut app = Connection::new(app_peer);
        app.send(7, &Message::Release).unwrap();
        app.send(7, &body(b"after the release")).unwrap();
        let mut module = Connection::new(module_peer);
        assert_eq!(
            module.read_frame().unwrap(),
            Some((7, body(b"after the release"))),
            "the module never sees RELEASE"
        );
        released_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("on_release was called");
        module.send(7, &Message::End).unwrap();
        app.send(7, &Message::End).unwrap();
        assert_eq!(module.read_frame().unwrap(), Some((7, Message::End)));
        assert!(matches!(tunnel.join().unwrap(), Ended::Cleanly));
    }

    #[test]
    fn an_error_is_passed_on_and_ends_the_tunnel() {
        let (mut module, mut app, tunnel) = start();
        let error = Message::Error {
            code: 502,
            message: "gone".into(),
        };
        app.send(7, &error).unwrap();
        assert_eq!(module.read_frame().unwrap(), Some((7, error)));
        assert!(matches!(tunnel.join().unwrap(), Ended::Broken(_)));
    }

    #[test]
    fn other_frames_break_the_tunnel() {
        let (mut module, _app, tunnel) = start();
        module.send(7, &Message::ReadBody { max: 10 }).unwrap();
        assert!(
            matches!(tunnel.join().unwrap(), Ended::Broken(e) if e.contains("unexpected frame"))
        );
    }
}
