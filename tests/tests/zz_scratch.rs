use anyhow::Result;
use flotilla_tests::cluster::ClusterLab;
use std::time::{Duration, Instant};

fn show(lab: &ClusterLab, args: &[&str]) {
    let t0 = Instant::now();
    let o = lab.cli(args).unwrap();
    eprintln!(
        "$ flotilla {}   [{:?} {}]\n{}{}",
        args.join(" "),
        t0.elapsed(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn scratch() -> Result<()> {
    let mut lab = ClusterLab::new(3)?;
    lab.init(1, &[])?;
    lab.add_worker_with_image(2, 1)?;
    lab.add_worker_with_image(3, 1)?;
    show(
        &lab,
        &[
            "service",
            "create",
            "-q",
            "--name",
            "g",
            "--mode",
            "global",
            "--stop-grace-period",
            "1s",
            "busybox:latest",
            "sh",
            "-c",
            "echo hi; sleep 1000",
        ],
    );
    show(&lab, &["service", "update", "-q", "--env-add", "X=1", "g"]);
    show(&lab, &["service", "ps", "g"]);
    show(&lab, &["service", "logs", "g"]);
    show(&lab, &["service", "scale", "g=3"]);
    lab.cli_stdin(&["secret", "create", "s1", "-"], b"one")?;
    show(&lab, &["secret", "create", "s1", "-"]);
    show(
        &lab,
        &["service", "update", "-q", "--secret-add", "s1", "g"],
    );
    show(&lab, &["secret", "rm", "s1"]);
    show(&lab, &["service", "update", "-q", "--secret-rm", "s1", "g"]);
    show(&lab, &["secret", "rm", "s1"]);
    show(
        &lab,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "w",
            "--replicas",
            "3",
            "--restart-condition",
            "any",
            "--restart-max-attempts",
            "1",
            "--restart-window",
            "10s",
            "--restart-delay",
            "100ms",
            "busybox:latest",
            "sh",
            "-c",
            "exit 0",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    show(&lab, &["service", "ps", "w"]);
    show(&lab, &["service", "logs", "--tail", "1", "g"]);
    show(&lab, &["service", "rm", "g", "w"]);
    std::thread::sleep(Duration::from_secs(2));
    show(&lab, &["service", "ls"]);
    for h in [2, 3] {
        let o = lab.agent_cli(h, &["ps", "-a"])?;
        eprintln!("host {h}: {}", String::from_utf8_lossy(&o.stdout));
    }
    show(&lab, &["node", "rm", &lab.node_of_host(3)?]);
    show(&lab, &["node", "rm", "--force", &lab.node_of_host(3)?]);
    show(&lab, &["node", "ls"]);
    Ok(())
}
