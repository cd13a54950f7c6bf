//! The one line `nocturne` prints for an error that ends a command.
//!
//! Errors reach `main` in two styles: `anyhow` context layers, whose text
//! leaves the cause out, and typed errors (thiserror) that write their cause
//! into their own message *and* expose it as `source()`. Printing the whole
//! chain (`{:#}`) repeats every cause of the second kind ("cannot connect to
//! X: refused: refused"); printing only the top drops the causes of the
//! first. [`one_line`] walks the chain and adds a cause only when the text so
//! far does not already say it.

/// `error` and its causes on one line, each cause said once.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to {addr}: {source}")]
    struct Connect {
        addr: &'static str,
        source: io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("target check failed: {source}")]
    struct Probe {
        source: Connect,
    }

    fn refused() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused")
    }

    #[test]
    fn causes_a_typed_error_already_states_are_not_repeated() {
        let e = anyhow::Error::new(Probe {
            source: Connect {
                addr: "127.0.0.1:1",
                source: refused(),
            },
        });
        assert_eq!(
            one_line(&e),
            "target check failed: cannot connect to 127.0.0.1:1: Connection refused"
        );
        // What `{:#}` would have printed.
        assert_eq!(format!("{e:#}").matches("Connection refused").count(), 3);
    }

    #[test]
    fn context_layers_keep_their_causes() {
        let e = anyhow::Error::new(refused())
            .context("reading /etc/nocturne.toml")
            .context("loading the configuration");
        assert_eq!(
            one_line(&e),
            "loading the configuration: reading /etc/nocturne.toml: Connection refused"
        );
    }

    #[test]
    fn mixed_chains_add_only_what_is_new() {
        let e = anyhow::Error::new(Connect {
            addr: "[::1]:80",
            source: refused(),
        })
        .context("starting the client");
        assert_eq!(
            one_line(&e),
            "starting the client: cannot connect to [::1]:80: Connection refused"
        );
    }
}
