//! kubelet-sim: plays the kubelet's side of the device-plugin protocol in a directory, printing
//! what a plugin registers and advertises, so spookd can be tried without a cluster.
//!
//! Usage: kubelet-sim --dir DIR [--allocate]
//!   --dir DIR     the device-plugins directory to serve kubelet.sock in (created if missing)
//!   --allocate    after every device-list change, Allocate the first device and print the env

use std::process::ExitCode;

use crossbeam_channel::select;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
// The kubelet stand-in: not part of spookd's library, compiled here (and into the tests) by path.
#[path = "../sim/mod.rs"]
#[allow(dead_code)]
mod sim;

use sim::{Event, Kubelet};

const USAGE: &str = "usage: kubelet-sim --dir DIR [--allocate]";

fn main() -> ExitCode {
    let mut dir = None;
    let mut allocate = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = args.next(),
            "--allocate" => allocate = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("kubelet-sim: unexpected argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match run(dir.as_ref(), allocate) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubelet-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &std::path::Path, allocate: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let kubelet = Kubelet::start(dir)?;
    let (tx, events) = crossbeam_channel::unbounded();
    kubelet.subscribe(tx);
    let (stop_tx, stop) = crossbeam_channel::bounded(1);
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("sim-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let _ = stop_tx.send(());
            }
        })?;
    println!("kubelet-sim: serving {}/kubelet.sock", dir.display());
    loop {
        select! {
            recv(stop) -> _ => return Ok(()),
            recv(events) -> event => {
                let Ok(event) = event else { return Ok(()) };
                print_event(&kubelet, &event, allocate);
            }
        }
    }
}

fn print_event(kubelet: &Kubelet, event: &Event, allocate: bool) {
    match event {
        Event::Registered { resource, endpoint } => {
            println!("kubelet-sim: registered {resource} (endpoint {endpoint})");
        }
        Event::Refused { resource, reason } => {
            println!("kubelet-sim: refused registration of {resource}: {reason}");
        }
        Event::StreamEnded { resource, endpoint } => {
            println!("kubelet-sim: ListAndWatch of {resource} on {endpoint} ended");
        }
        Event::Devices { resource, devices } => {
            let list: Vec<String> = devices
                .iter()
                .map(|(id, h)| format!("{id} ({h})"))
                .collect();
            println!(
                "kubelet-sim: {resource} devices: {}",
                if list.is_empty() {
                    "none".to_owned()
                } else {
                    list.join(", ")
                }
            );
            if let (true, Some((first, _))) = (allocate, devices.first()) {
                match kubelet.allocate(resource, &[&[first.as_str()]]) {
                    Ok(resp) => {
                        println!("kubelet-sim: Allocate {resource} [{first}] -> env:");
                        for c in &resp.container_responses {
                            let mut env: Vec<_> = c.envs.iter().collect();
                            env.sort();
                            for (k, v) in env {
                                println!("    {k}={v}");
                            }
                        }
                    }
                    Err(e) => println!("kubelet-sim: Allocate {resource} [{first}] failed: {e}"),
                }
            }
        }
    }
}
