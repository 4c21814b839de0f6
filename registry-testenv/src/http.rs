//! The harness's one HTTP client: a single plain-HTTP/1.1 exchange with a
//! test server on loopback (etcd's health and maintenance endpoints, a
//! Consul agent's API), through hyper's connection API — one connection per
//! exchange, closed after it, bounded by a time limit. The backends' own
//! clients are never used for this: the harness probes servers the way a
//! third party would.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// One request: `method path` on `authority` (`host:port`), with `headers`
/// and a JSON `body`, answered within `limit`: `(status, body)`.
pub async fn request(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    limit: Duration,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        let driver = tokio::spawn(connection);
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONNECTION, "close");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request =
            builder.body(Full::new(Bytes::from(body.unwrap_or("").to_owned()))).map_err(std::io::Error::other)?;
        let answer = sender.send_request(request).await.map_err(std::io::Error::other)?;
        let status = answer.status().as_u16();
        let bytes = answer.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(limit, exchange).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{authority} did not answer in {limit:?}")))
    })
}

#[cfg(test)]
mod tests {
    use super::request;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole_and_the_headers_are_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&seen).contains("\r\n\r\n{}") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "request ended early: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(
                    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                )
                .await
                .unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        let answer =
            request(&authority, "PUT", "/v1/kv/x", Some("{}"), &[("X-Consul-Token", "t")], Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!(answer, (201, "abcde".to_owned()));
        let seen = server.await.unwrap();
        assert!(seen.starts_with("PUT /v1/kv/x HTTP/1.1\r\n"), "{seen}");
        assert!(seen.to_ascii_lowercase().contains("x-consul-token: t"), "{seen}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let error = request(&authority, "GET", "/health", None, &[], Duration::from_millis(200)).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        drop(listener);
    }
}
