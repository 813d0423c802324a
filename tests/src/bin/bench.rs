//! The benchmark driver behind `cargo xtask bench` (run as root): runs every
//! measure, prints the table, writes the JSON report.

use std::path::PathBuf;

use serde_json::json;
use unrm_tests::bench::{self, Row};

struct Options {
    quick: bool,
    /// Inside the stock-kernel VM (`cargo xtask bench` boots it).
    emulated: bool,
    only: Option<Vec<String>>,
    out: PathBuf,
}

fn parse() -> Options {
    let mut opts =
        Options { quick: false, emulated: false, only: None, out: PathBuf::from("target/bench/latest.json") };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--emulated" => opts.emulated = true,
            "--only" => opts.only = args.next().map(|v| v.split(',').map(str::to_owned).collect()),
            "--out" => opts.out = args.next().map(PathBuf::from).expect("--out PATH"),
            "hold-many" => {
                let rest: Vec<String> = args.collect();
                let n = |i: usize| rest[i].parse().unwrap();
                bench::scan::hold_many(&rest[0], n(1), n(2), n(3));
                std::process::exit(0);
            }
            other => {
                eprintln!("bench: unknown argument {other:?} (--quick, --only a,b, --out PATH)");
                std::process::exit(2);
            }
        }
    }
    opts
}

fn main() {
    let opts = parse();
    let wanted = |name: &str| opts.only.as_ref().is_none_or(|only| only.iter().any(|o| o == name));
    let q = opts.quick;
    let mut rows: Vec<Row> = Vec::new();
    let mut section = |name: &str, f: &dyn Fn() -> Vec<Row>| {
        if wanted(name) {
            eprintln!("bench: {name}");
            for row in f() {
                row.print();
                rows.push(row);
            }
        }
    };
    println!("| measure | how | result | target | |");
    println!("|---|---|---|---|---|");
    section("hot", &|| {
        use bench::hot::{Machine, measure};
        let rounds = if q { 3 } else { 11 };
        if opts.emulated {
            // The VFS tiers load here; the tracepoint tier beside them.
            let rounds = if q { 3 } else { 5 };
            let mut rows = measure(rounds, "fentry", &["--tier", "fentry"], Machine::Emulated);
            rows.extend(measure(rounds, "tracepoint", &["--tier", "tracepoint"], Machine::Emulated));
            return rows;
        }
        let mut rows = measure(rounds, "tracepoint", &[], Machine::Host);
        rows.extend(measure(rounds, "fs", &["--tier", "fs"], Machine::Host));
        rows
    });
    section("held", &|| {
        let sizes: &[usize] = if q { &[1_000, 100_000] } else { &[1_000, 100_000, 1_000_000] };
        bench::held_unlink::measure(sizes, if q { 3 } else { 7 }, 100, &[])
    });
    section("pin", &|| vec![bench::pin::latency(if q { 300 } else { 1000 }, &[])]);
    section("capture", &|| {
        vec![bench::pin::capture_rate(if q { 50 } else { 200 }, if q { 2 } else { 10 }, &[])]
    });
    section("storm", &|| {
        let files = if q { 100_000 } else { 1_000_000 };
        let mut rows = bench::storm::measure(files, &[]);
        // Side by side: what the event log (on by default) costs the daemon.
        let mut off = bench::storm::measure(files, &["--events", "off"]).swap_remove(0);
        off.measure = "unlink storm, event log off".into();
        rows.insert(1, off);
        rows
    });
    section("protect", &|| {
        let mut rows = bench::protect::rm_rf(if q { 20_000 } else { 100_000 }, if q { 1 } else { 3 });
        rows.push(bench::protect::save_loop_cost(if q { 100 } else { 300 }, if q { 3 } else { 7 }));
        rows
    });
    section("memory", &|| vec![bench::memory::pinned(if q { 2_000 } else { 10_000 })]);
    section("scan", &|| {
        let fds_each = if q { 200 } else { 1000 };
        // Few deleted among many open, then every open file deleted.
        let few = bench::scan::Shape {
            processes: 50,
            fds_each,
            files_each: 50,
            deleted_each: 5,
            every_process_deletes: false,
        };
        let all = bench::scan::Shape {
            files_each: fds_each,
            deleted_each: fds_each,
            every_process_deletes: true,
            ..few
        };
        vec![bench::scan::measure(&few, 5), bench::scan::measure(&all, 5)]
    });
    section("snapshot", &|| bench::snapshot::measure(if q { 256 << 20 } else { 1 << 30 }, 3));

    let report = json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": bench::machine(),
        "quick": q,
        "emulated": opts.emulated,
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!("bench: report written to {}", opts.out.display());
}
