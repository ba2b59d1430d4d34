//! A TCP proxy the test owns, to cut and restore a service (a database,
//! Redis) without touching the service itself.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub struct Proxy {
    pub port: u16,
    upstream: String,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    open: bool,
    streams: Vec<TcpStream>,
}

impl Proxy {
    /// A proxy on a free local port to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            open: true,
            streams: Vec::new(),
        }));
        {
            let state = Arc::clone(&state);
            let upstream = upstream.to_owned();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if !state.lock().unwrap().open {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    {
                        let mut st = state.lock().unwrap();
                        st.streams.push(client.try_clone().unwrap());
                        st.streams.push(server.try_clone().unwrap());
                    }
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                }
            });
        }
        Proxy {
            port,
            upstream: upstream.to_owned(),
            state,
        }
    }

    /// A proxy to the server `url` names (`scheme://user@host:port/...`).
    pub fn in_front_of(url: &str) -> Proxy {
        let upstream = super::host_port(url).unwrap_or_else(|| panic!("no host:port in {url}"));
        Proxy::start(upstream)
    }

    /// `url` with its server replaced by this proxy: the URL to give the
    /// beat.
    pub fn url(&self, url: &str) -> String {
        assert!(
            url.contains(&self.upstream),
            "{url} is not through {}",
            self.upstream
        );
        url.replacen(&self.upstream, &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        st.open = false;
        for stream in st.streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap().open = true;
    }
}
