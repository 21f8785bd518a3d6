//! Who is asking, from the socket's peer credentials (`SO_PEERCRED`: taken by the kernel at
//! `connect`, so a client cannot claim another uid), and what they may do: root everything;
//! any other user only jobs recorded as theirs, and only processes of their own.

use std::os::fd::{AsRawFd, BorrowedFd};

/// The credentials of the process that connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
}

impl Peer {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

pub fn peer_of(sock: BorrowedFd<'_>) -> std::io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a local ucred of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
    })
}

/// May `peer` act on a job whose owner record says `owner` (`None`: no record)?
pub fn may_act_on(peer: &Peer, job: &str, owner: Option<u32>) -> Result<(), String> {
    match owner {
        _ if peer.is_root() => Ok(()),
        Some(o) if o == peer.uid => Ok(()),
        Some(o) => Err(format!(
            "permission denied: job {job} belongs to uid {o}, not to uid {}",
            peer.uid
        )),
        None => Err(format!(
            "permission denied: job {job} has no owner record; only root may act on it"
        )),
    }
}

/// May `peer` create a job for `uid`? Only root creates jobs for others.
pub fn may_create_for(peer: &Peer, uid: u32) -> Result<(), String> {
    if peer.is_root() || peer.uid == uid {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {} may not create a job for uid {uid}",
            peer.uid
        ))
    }
}

/// May `peer` move process `pid` (owned by `pid_uid`, `None` if gone) into a job? A user only
/// their own processes: otherwise moving someone's process into one's job, then signalling
/// the job, would reach it.
pub fn may_move(peer: &Peer, pid: i32, pid_uid: Option<u32>) -> Result<(), String> {
    match pid_uid {
        _ if peer.is_root() => Ok(()),
        Some(u) if u == peer.uid => Ok(()),
        Some(_) => Err(format!(
            "permission denied: process {pid} does not belong to uid {}",
            peer.uid
        )),
        None => Err(format!("no such process {pid}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer { pid: 1, uid }
    }

    #[test]
    fn who_may_do_what() {
        let root = peer(0);
        let alice = peer(1000);
        // (peer, owner record, allowed)
        let act: &[(&Peer, Option<u32>, bool)] = &[
            (&root, Some(1000), true),
            (&root, None, true),
            (&alice, Some(1000), true),
            (&alice, Some(1001), false),
            (&alice, Some(0), false),
            (&alice, None, false),
        ];
        for (p, owner, ok) in act {
            let r = may_act_on(p, "7", *owner);
            assert_eq!(r.is_ok(), *ok, "{p:?} on {owner:?}: {r:?}");
            if let Err(e) = r {
                assert!(e.starts_with("permission denied: "), "{e}");
            }
        }
        assert!(may_create_for(&root, 1000).is_ok());
        assert!(may_create_for(&alice, 1000).is_ok());
        assert!(may_create_for(&alice, 0).is_err());
        assert!(may_move(&alice, 5, Some(1000)).is_ok());
        assert!(may_move(&alice, 5, Some(0)).is_err());
        assert!(may_move(&alice, 5, None).is_err());
        assert!(may_move(&root, 5, Some(1000)).is_ok());
    }

    #[test]
    fn peer_credentials_of_a_socket_pair_are_ours() {
        use std::os::fd::AsFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = peer_of(a.as_fd()).unwrap();
        // SAFETY: getuid has no preconditions.
        assert_eq!(p.uid, unsafe { libc::getuid() });
        assert_eq!(p.pid, std::process::id() as i32);
    }
}
