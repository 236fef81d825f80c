//! Fair measurement on a small machine: pinning the server and the generator to disjoint
//! CPU sets (`sched_setaffinity`), and the CPU time each side used in a phase (Linux
//! `/proc/PID/stat`, all threads of the process).

use std::time::Duration;

/// A CPU list as `taskset -c` takes it: `0`, `0,2`, `0-3`, `0-1,4`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let number = |s: &str| {
            s.parse::<usize>()
                .ok()
                .filter(|n| *n < libc::CPU_SETSIZE as usize)
                .ok_or_else(|| format!("bad CPU list {text:?}: {s:?} is not a CPU number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(format!("bad CPU list {text:?}: {part} is backwards"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err(format!("bad CPU list {text:?}: empty"));
    }
    Ok(cpus)
}

/// `true` when the two lists share a CPU.
pub fn overlap(a: &[usize], b: &[usize]) -> bool {
    a.iter().any(|c| b.contains(c))
}

fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> Result<(), String> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set, and CPU_SET indexes
    // below CPU_SETSIZE (checked by `parse_cpu_list`).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "sched_setaffinity({tid}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The CPUs the calling thread may run on now.
pub fn current_affinity() -> Result<Vec<usize>, String> {
    // SAFETY: as in `set_affinity`; CPU_ISSET reads below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(format!(
                "sched_getaffinity: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Pins the calling thread (and the threads it starts afterwards, which inherit it).
pub fn pin_self(cpus: &[usize]) -> Result<(), String> {
    set_affinity(0, cpus)
}

/// Pins every thread process `pid` has now. Threads it starts later inherit the mask of
/// the thread that starts them, so a server whose workers exist once it listens is pinned
/// for good.
pub fn pin_process(pid: u32, cpus: &[usize]) -> Result<usize, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("cannot list the threads of process {pid}: {e}"))?;
    let mut pinned = 0;
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            set_affinity(tid, cpus)?;
            pinned += 1;
        }
    }
    Ok(pinned)
}

/// User + system CPU time process `pid` has used so far (all its threads).
pub fn process_cpu(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    cpu_of_stat(&stat).ok_or_else(|| format!("unexpected /proc/{pid}/stat"))
}

/// utime + stime of a `/proc/PID/stat` line (fields 14 and 15; the command name in
/// parentheses may contain spaces, so fields are counted after its closing parenthesis).
fn cpu_of_stat(stat: &str) -> Option<Duration> {
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// CPU used by one side during a phase.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub server: Option<Duration>,
    pub generator: Duration,
}

/// Measures the CPU the server process (when its PID is known) and this generator use
/// between [`Meter::start`] and [`Meter::stop`].
pub struct Meter {
    server_pid: Option<u32>,
    server0: Option<Duration>,
    self0: Duration,
}

impl Meter {
    pub fn start(server_pid: Option<u32>) -> Meter {
        Meter {
            server_pid,
            server0: server_pid.and_then(|p| process_cpu(p).ok()),
            self0: process_cpu(std::process::id()).unwrap_or_default(),
        }
    }

    pub fn stop(self) -> Usage {
        let server = match (self.server_pid, self.server0) {
            (Some(p), Some(before)) => process_cpu(p)
                .ok()
                .map(|after| after.saturating_sub(before)),
            _ => None,
        };
        let generator = process_cpu(std::process::id())
            .unwrap_or_default()
            .saturating_sub(self.self0);
        Usage { server, generator }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), [0]);
        assert_eq!(parse_cpu_list("1,0,1").unwrap(), [0, 1]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), [0, 1, 2, 5]);
        for bad in ["", "a", "2-1", "0,", "-1", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
        assert!(overlap(&[0, 1], &[1]));
        assert!(!overlap(&[0], &[1]));
    }

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let line = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let got = cpu_of_stat(line).unwrap().as_secs_f64();
        assert!((got - 300.0 / hz).abs() < 1e-9, "{got}");
    }

    #[test]
    fn this_process_uses_cpu_and_can_be_pinned_where_it_runs() {
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(process_cpu(std::process::id()).unwrap() > Duration::ZERO);
        // Pinning to the CPUs this thread may already use changes nothing and must work.
        let cpus = current_affinity().unwrap();
        assert!(!cpus.is_empty());
        assert!(pin_process(std::process::id(), &cpus).unwrap() >= 1);
        assert_eq!(current_affinity().unwrap(), cpus);
    }
}
