//! Keeping the load generator off the servers' cores.
//!
//! A client thread on a core a server also runs on competes with the
//! server it measures: each waits for the other's time slices, and the
//! latencies count both. The comparison is only fair when the client's
//! cores (`--client-cores`) are apart from nocturne's io and worker cores,
//! which are also where the baselines run. The default placement is: on
//! two cores, the client on 0 and every server on 1. Overlap is refused
//! unless asked for (`--allow-shared-cores`), e.g. to run `--nocturne-poll
//! spin` on a 2-core machine, where the workers need the client's core.

use crate::pin::format_core_list;

/// The client's cores overlap the servers'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--client-cores {client} share {shared}: the load generator would compete with the \
     servers it measures (the baselines run on nocturne's io and worker cores too). Give \
     the client cores of its own, or pass --allow-shared-cores to measure that way anyway"
)]
pub struct SharedCores {
    /// The client's cores, as a core list.
    pub client: String,
    /// What is shared, e.g. `core 1 with nocturne's --io-cores`.
    pub shared: String,
}

/// Refuses client cores that nocturne's io or worker cores (and so the
/// baselines) also use.
pub fn check_client_apart(
    client: &[usize],
    io: &[usize],
    workers: &[usize],
) -> Result<(), SharedCores> {
    let overlap = |servers: &[usize]| {
        let mut shared: Vec<usize> = client
            .iter()
            .copied()
            .filter(|c| servers.contains(c))
            .collect();
        shared.sort_unstable();
        shared.dedup();
        shared
    };
    let named = |shared: &[usize], flag: &str| {
        let noun = if shared.len() == 1 { "core" } else { "cores" };
        format!("{noun} {} with nocturne's {flag}", format_core_list(shared))
    };
    let mut shared = Vec::new();
    let with_io = overlap(io);
    if !with_io.is_empty() {
        shared.push(named(&with_io, "--io-cores"));
    }
    let with_workers = overlap(workers);
    if !with_workers.is_empty() {
        shared.push(named(&with_workers, "--worker-cores"));
    }
    if shared.is_empty() {
        return Ok(());
    }
    let mut client = client.to_vec();
    client.sort_unstable();
    client.dedup();
    Err(SharedCores {
        client: format_core_list(&client),
        shared: shared.join(" and "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apart_is_fine_and_overlap_names_every_shared_core() {
        assert_eq!(check_client_apart(&[0], &[1], &[1]), Ok(()));
        assert_eq!(check_client_apart(&[0, 1], &[14, 15], &[2, 3]), Ok(()));
        let err = check_client_apart(&[1], &[1], &[1]).unwrap_err();
        assert_eq!(err.client, "1");
        assert_eq!(
            err.shared,
            "core 1 with nocturne's --io-cores and core 1 with nocturne's --worker-cores"
        );
        let err = check_client_apart(&[0, 1, 2], &[1], &[0, 2, 5]).unwrap_err();
        assert_eq!(err.client, "0-2");
        assert_eq!(
            err.shared,
            "core 1 with nocturne's --io-cores and cores 0,2 with nocturne's --worker-cores"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("--client-cores 0-2 share core 1 with")
                && text.contains("--allow-shared-cores"),
            "{text}"
        );
    }
}
