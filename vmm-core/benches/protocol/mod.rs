//! The command line every bench binary answers, which `cargo xtask bench`
//! drives: no arguments runs every case and prints `CASE: X ns/op`;
//! `--list` prints the case names; `--case NAME --iters N` runs one case N
//! times (under callgrind, for instructions per operation). The benches of
//! every crate include this file by path.

// Each bench uses the parts it needs.
#![allow(dead_code)]

use std::time::Instant;

/// What the command line asks for.
pub enum Request {
    /// `--list`: the case names, one a line.
    List,
    /// `--case NAME [--iters N]`: one case, N times, printing nothing.
    One {
        /// The case.
        case: String,
        /// N, if given.
        iters: Option<u64>,
    },
    /// No arguments: every case, timed.
    All,
}

/// Read the command line.
pub fn request() -> Request {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return Request::List;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match value("--case") {
        Some(case) => Request::One {
            case,
            iters: value("--iters").and_then(|n| n.parse().ok()),
        },
        None => Request::All,
    }
}

/// `run(case, iters)` after a warm-up of a tenth as many: nanoseconds per
/// iteration.
pub fn time(run: &mut impl FnMut(&str, u64), case: &str, iters: u64) -> f64 {
    run(case, iters / 10);
    let t = Instant::now();
    run(case, iters);
    t.elapsed().as_nanos() as f64 / iters.max(1) as f64
}

/// The whole protocol for benches whose cases are names run by
/// `run(case, iters)`: `--case` without `--iters` runs `one_default`
/// times; no arguments prints `header` (if any) and times each case over
/// `each` iterations.
pub fn serve(
    cases: &[&str],
    one_default: u64,
    each: u64,
    header: Option<String>,
    mut run: impl FnMut(&str, u64),
) {
    match request() {
        Request::List => {
            for c in cases {
                println!("{c}");
            }
        }
        Request::One { case, iters } => run(&case, iters.unwrap_or(one_default)),
        Request::All => {
            if let Some(h) = header {
                println!("{h}");
            }
            for case in cases {
                let ns = time(&mut run, case, each);
                println!("{case}: {ns:.2} ns/op");
            }
        }
    }
}
