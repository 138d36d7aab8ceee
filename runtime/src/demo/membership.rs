//! `idunno-node demo --membership`: the membership demo: a local cluster on loopback that shows
//! membership converging, detecting a mass failure, a restarted node rejoining as a new
//! generation, and a graceful leave (no Raft, no jobs).
//!
//! Owns: those steps, their deadlines and their progress output; it talks to the nodes only
//! through the control protocol, like any client.
//! Must never: start or kill processes except through the [`Cluster`] guard.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use idunno_core::membership::{Member, MemberState, NodeId};

use super::cluster::{Cluster, node_ip};
use super::{DemoError, Progress, fail, ids, secs, show};
use crate::cli::DemoArgs;
use crate::control;
use crate::render;

/// Pause between two polls of every node's view.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Deadline of one control request during polling.
const POLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Survivors given to a restarted node as seeds: one, so the others learn of it by gossip.
const RESTART_SEEDS_MAX: usize = 1;

/// The membership demo's steps.
pub async fn steps(
    args: &DemoArgs,
    cluster: &mut Cluster,
    mut progress: Progress,
) -> Result<(), DemoError> {
    let progress = &mut progress;
    let n = usize::from(args.nodes);
    let kill = usize::from(args.kill);
    start_all(progress, cluster, n).await?;
    let mut restarted = None;
    if kill > 0 {
        // Spread over the cluster, the seed first: it has no special role once others joined.
        let victims: Vec<usize> = (0..kill).map(|i| i * n / kill).collect();
        let killed = kill_and_detect(progress, cluster, &victims).await?;
        restarted = Some(restart_one(progress, cluster, &victims, &killed).await?);
    }
    leave_one(progress, cluster, restarted).await?;
    let summary = progress
        .timings
        .iter()
        .map(|(what, took)| format!("{what} {}", secs(*took)))
        .collect::<Vec<_>>()
        .join(", ");
    progress.say(&format!("timings: {summary}"));
    Ok(())
}

/// Step 1: starts `n` nodes (the first is the seed the others join) and waits until every node
/// sees all `n` alive.
async fn start_all(
    progress: &mut Progress,
    cluster: &mut Cluster,
    n: usize,
) -> Result<(), DemoError> {
    progress.say(&format!(
        "starting {n} nodes on 127.0.0.2..=127.0.0.{} (logs in {})",
        n + 1,
        cluster.root.display()
    ));
    let seed = cluster.spawn(0, node_ip(0), &[], &[]).await?;
    progress.say(&format!("seed {seed} listening"));
    let mut pending = Vec::new();
    for index in 1..n {
        pending.push(cluster.start_spawn(index, node_ip(index), &[seed.addr], &[])?);
    }
    for (index, line) in pending {
        cluster.finish_spawn(index, line).await?;
    }
    let everyone = cluster.live_ids();
    progress.say(&format!(
        "{n} nodes listening; waiting until every node sees all {n} alive"
    ));
    let took = wait_for_views(
        &everyone,
        &everyone,
        &BTreeSet::new(),
        progress.step_timeout,
    )
    .await?;
    progress.say(&format!(
        "converged: every node sees all {n} alive after {}",
        secs(took)
    ));
    progress.timings.push(("converge", took));
    show_view(seed.addr).await
}

/// Step 2: SIGKILLs the `victims` at once and waits until every survivor's view drops exactly
/// them. Returns the killed ids, in the order of `victims`.
async fn kill_and_detect(
    progress: &mut Progress,
    cluster: &mut Cluster,
    victims: &[usize],
) -> Result<Vec<NodeId>, DemoError> {
    let victim_ids: Vec<NodeId> = victims.iter().filter_map(|&i| cluster.id(i)).collect();
    let killed: BTreeSet<NodeId> = victim_ids.iter().copied().collect();
    progress.say(&format!(
        "SIGKILL {} nodes at once, the seed included: {}",
        killed.len(),
        ids(&killed)
    ));
    for &index in victims {
        cluster.kill(index)?;
    }
    let survivors = cluster.live_ids();
    let took = wait_for_views(&survivors, &survivors, &killed, progress.step_timeout).await?;
    progress.say(&format!(
        "every survivor ({}) dropped exactly the {} killed nodes after {}",
        survivors.len(),
        killed.len(),
        secs(took)
    ));
    progress.timings.push(("detect", took));
    let observer = cluster
        .any_live_addr()
        .ok_or_else(|| DemoError("no survivor".into()))?;
    show_view(observer).await?;
    Ok(victim_ids)
}

/// Step 3: restarts the first victim at its old address, joining through one survivor, and
/// waits until every node sees the new generation alive and the old one gone. Returns its index.
async fn restart_one(
    progress: &mut Progress,
    cluster: &mut Cluster,
    victims: &[usize],
    killed: &[NodeId],
) -> Result<usize, DemoError> {
    let (Some(&index), Some(&old)) = (victims.first(), killed.first()) else {
        return fail("no killed node to restart");
    };
    let survivors = cluster.live_ids();
    let seeds: Vec<SocketAddr> = survivors
        .iter()
        .take(RESTART_SEEDS_MAX)
        .map(|id| id.addr)
        .collect();
    progress.say(&format!(
        "restarting {} (was {old}), joining through {} survivor(s)",
        old.addr,
        seeds.len()
    ));
    let new = cluster.spawn(index, old.addr, &seeds, &[]).await?;
    if new.addr != old.addr || new.generation <= old.generation {
        return fail(format!(
            "restarted node is {new}, expected {} with a newer generation than {}",
            old.addr, old.generation
        ));
    }
    let everyone = cluster.live_ids();
    let gone: BTreeSet<NodeId> = killed.iter().copied().collect();
    let took = wait_for_views(&everyone, &everyone, &gone, progress.step_timeout).await?;
    progress.say(&format!(
        "{new} rejoined: all {} nodes see it alive (and {old} dead) after {}",
        everyone.len(),
        secs(took)
    ));
    progress.timings.push(("rejoin", took));
    let observer = survivors
        .first()
        .map(|id| id.addr)
        .ok_or_else(|| DemoError("no survivor".into()))?;
    show_view(observer).await?;
    Ok(index)
}

/// Step 4: asks one node (not `spare`) to leave, waits until every other node shows it gone,
/// then until it has exited with status 0.
async fn leave_one(
    progress: &mut Progress,
    cluster: &mut Cluster,
    spare: Option<usize>,
) -> Result<(), DemoError> {
    let leaver_index = cluster
        .live_indices()
        .into_iter()
        .rev()
        .find(|&i| Some(i) != spare)
        .ok_or_else(|| DemoError("no node left to make leave".into()))?;
    let leaver = cluster
        .id(leaver_index)
        .ok_or_else(|| DemoError("the leaving node has no id".into()))?;
    progress.say(&format!("asking {leaver} to leave"));
    let t0 = Instant::now();
    control::leave(leaver.addr, control::CLIENT_TIMEOUT).await?;
    let mut remaining = cluster.live_ids();
    remaining.remove(&leaver);
    let gone = BTreeSet::from([leaver]);
    wait_for_views(&remaining, &remaining, &gone, progress.step_timeout).await?;
    let took = t0.elapsed();
    progress.say(&format!(
        "every remaining node ({}) shows {leaver} gone after {}",
        remaining.len(),
        secs(took)
    ));
    progress.timings.push(("leave", took));
    cluster
        .wait_exit_success(leaver_index, progress.step_timeout)
        .await?;
    progress.say(&format!(
        "{leaver} finished its leave and exited with status 0 after {}",
        secs(t0.elapsed())
    ));
    let observer = cluster
        .any_live_addr()
        .ok_or_else(|| DemoError("no node remains".into()))?;
    show_view(observer).await
}

pub(super) async fn show_view(observer: SocketAddr) -> Result<(), DemoError> {
    let members = control::list_members(observer, control::CLIENT_TIMEOUT).await?;
    let mut block = String::new();
    let _ = writeln!(block, "  membership as seen by {observer}:");
    for line in render::members_table(&members).lines() {
        let _ = writeln!(block, "    {line}");
    }
    show(&block);
    Ok(())
}

/// How one node's view differs from what is expected, or `None` if it matches.
fn view_mismatch(
    members: &[Member],
    alive: &BTreeSet<NodeId>,
    gone: &BTreeSet<NodeId>,
) -> Option<String> {
    let seen_alive: BTreeSet<NodeId> = members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| m.id)
        .collect();
    let mut problems = Vec::new();
    let missing: BTreeSet<NodeId> = alive.difference(&seen_alive).copied().collect();
    if !missing.is_empty() {
        problems.push(format!("not alive: {}", ids(&missing)));
    }
    let extra: BTreeSet<NodeId> = seen_alive.difference(alive).copied().collect();
    if !extra.is_empty() {
        problems.push(format!("unexpectedly alive: {}", ids(&extra)));
    }
    let still_live: BTreeSet<NodeId> = members
        .iter()
        .filter(|m| gone.contains(&m.id) && m.state.is_live())
        .map(|m| m.id)
        .collect();
    if !still_live.is_empty() {
        problems.push(format!("still live: {}", ids(&still_live)));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Polls every node of `observers` until each one's alive set is exactly `alive` and none of
/// `gone` is alive or suspect in it. Returns how long it took.
pub(super) async fn wait_for_views(
    observers: &BTreeSet<NodeId>,
    alive: &BTreeSet<NodeId>,
    gone: &BTreeSet<NodeId>,
    timeout: Duration,
) -> Result<Duration, DemoError> {
    let t0 = Instant::now();
    loop {
        let mut problems = Vec::new();
        for id in observers {
            match control::list_members(id.addr, POLL_REQUEST_TIMEOUT).await {
                Ok(members) => {
                    if let Some(problem) = view_mismatch(&members, alive, gone) {
                        problems.push(format!("{id}: {problem}"));
                    }
                }
                Err(e) => problems.push(format!("{id}: {e}")),
            }
        }
        if problems.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            return fail(format!(
                "views did not converge within {}:\n  {}",
                secs(timeout),
                problems.join("\n  ")
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_core::time::Instant as CoreInstant;

    fn id(host: u8, generation: u64) -> NodeId {
        NodeId::new(SocketAddr::from(([127, 0, 0, host], 4000)), generation)
    }

    fn member(id: NodeId, state: MemberState) -> Member {
        Member {
            id,
            incarnation: 0,
            state,
            since: CoreInstant::ZERO,
        }
    }

    #[test]
    fn a_view_matches_only_with_exactly_the_expected_alive_set() {
        let (a, b, c) = (id(2, 1), id(3, 1), id(4, 1));
        let alive = BTreeSet::from([a, b]);
        let gone = BTreeSet::from([c]);
        let good = [
            member(a, MemberState::Alive),
            member(b, MemberState::Alive),
            member(c, MemberState::Dead),
        ];
        assert_eq!(view_mismatch(&good, &alive, &gone), None);
        let absent = [member(a, MemberState::Alive), member(b, MemberState::Alive)];
        assert_eq!(view_mismatch(&absent, &alive, &gone), None);
        let suspect = [
            member(a, MemberState::Alive),
            member(b, MemberState::Alive),
            member(c, MemberState::Suspect),
        ];
        assert!(view_mismatch(&suspect, &alive, &gone).is_some());
        let short = [
            member(a, MemberState::Alive),
            member(b, MemberState::Suspect),
        ];
        assert!(view_mismatch(&short, &alive, &gone).is_some());
        let extra = [
            member(a, MemberState::Alive),
            member(b, MemberState::Alive),
            member(id(5, 1), MemberState::Alive),
        ];
        assert!(view_mismatch(&extra, &alive, &gone).is_some());
    }
}
