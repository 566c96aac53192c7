//! Phase 2: the monitor pass over the open ledger entries (health, stability, safety, then
//! the scale-down of a fallback node), and the loop that runs it with recovery and cleanup.

use std::future::Future;

use async_trait::async_trait;

use super::*;

/// What the monitor loop ([`Engine::run_monitor`]) reports after each step, for its runner to
/// log, count or note. Every method does nothing by default; `()` reports nothing.
#[async_trait]
pub trait MonitorHooks: Send + Sync {
    /// After the recovery the loop starts with: the number of open entries, or the error
    /// (the monitor then goes on: each tick loads the ledger again).
    async fn recovered(&self, result: &Result<usize, Error>) {
        let _ = result;
    }

    /// After each monitor pass.
    async fn ticked(&self, result: &Result<TickReport, Error>) {
        let _ = result;
    }

    /// After each cleanup: the number of entries removed, or the error.
    async fn cleaned(&self, result: &Result<usize, Error>) {
        let _ = result;
    }
}

impl MonitorHooks for () {}

/// The next time a periodic step is due after one due at `due` ran until `now`: one period
/// later, or at once if that has passed already (then periods count from now), as a tokio
/// interval with `MissedTickBehavior::Delay` does.
fn next_due(due: SystemTime, period: Duration, now: SystemTime) -> SystemTime {
    (due + period).max(now)
}

impl<C: Cloud, K: Cluster, T: Clock, S: LedgerStore, L: ScaleLock> Engine<C, K, T, S, L> {
    /// Phase 2: one monitor pass over the open ledger entries. With no open entry it makes no
    /// cloud call at all; otherwise one batched describe and at most one activities call.
    ///
    /// # Cancel safety
    ///
    /// Dropped at any await point, it leaves no entry claimed by this engine and no scale
    /// lock held; a scale-down under way is left `Draining` with its node tainted and
    /// cordoned, and the next tick finishes or abandons it (its termination is fenced by the
    /// entry's `scale_downs` count, so a node reopened meanwhile is never terminated).
    pub async fn monitor_tick(&self) -> Result<TickReport, Error> {
        let mut report = TickReport::default();
        let ledger = self.store.load().await?.value;
        let now = self.clock.now();
        let in_flight = self.state().in_flight.clone();
        let open: Vec<Entry> = ledger
            .open()
            .filter(|e| !in_flight.contains(&e.at_risk_instance))
            .cloned()
            .collect();
        if open.is_empty() {
            return Ok(report);
        }
        let groups = self
            .cloud
            .describe_groups(&self.config.group_names())
            .await?;
        let by_name: HashMap<&str, &Group> = groups.iter().map(|g| (g.name.as_str(), g)).collect();

        // Health of every spot group with an open fallback; activities only where the cheap
        // check (InService == desired) passes.
        let spot_groups: Vec<String> = {
            let mut v: Vec<String> = open
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::Fallback | EntryKind::Surplus))
                .map(|e| e.spot_group.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let need_activities: Vec<String> = spot_groups
            .iter()
            .filter(|g| {
                by_name
                    .get(g.as_str())
                    .is_some_and(|g| g.serving_count() == g.desired)
            })
            .cloned()
            .collect();
        let window = self
            .config
            .timings
            .error_window
            .max(self.config.timings.stability);
        let activities = if need_activities.is_empty() {
            Vec::new()
        } else {
            self.cloud
                .scaling_activities(&need_activities, now.checked_sub(window).unwrap_or(now))
                .await?
        };
        let mut health_of: HashMap<String, Verdict> = HashMap::new();
        for name in &spot_groups {
            let verdict = match by_name.get(name.as_str()) {
                Some(g) => health(g, &activities, now, &self.config),
                None => Verdict::Wait(vec![Reason::GroupMissing {
                    group: name.clone(),
                }]),
            };
            let mut state = self.state();
            if verdict.is_go() {
                state.healthy_since.entry(name.clone()).or_insert(now);
            } else {
                state.healthy_since.remove(name);
            }
            health_of.insert(name.clone(), verdict);
        }

        // One snapshot and one safety index per tick (until a drain changes the cluster).
        let candidates: Vec<InstanceId> = open
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Fallback | EntryKind::Surplus))
            .filter_map(|e| e.instance.clone())
            .collect();
        let mut view: Option<TickView> = None;
        for entry in open {
            let Some(_claim) = self.claim(&entry.id) else {
                continue;
            };
            let outcome = match (entry.kind, entry.state) {
                (_, EntryState::Pending) if self.pending_is_stale(&entry, now) => {
                    self.settle_pending(&entry, &by_name).await.map(|_| ())
                }
                (_, EntryState::Pending) => Ok(()),
                (EntryKind::Prescale, _) => self.settle_prescale(&entry, &by_name).await,
                (EntryKind::Fallback | EntryKind::Surplus, _) => {
                    self.scale_down_step(
                        &entry,
                        &by_name,
                        &activities,
                        &health_of,
                        (&mut view, &candidates),
                        &mut report,
                    )
                    .await
                }
            };
            if let Err(e) = outcome {
                self.emit(Event::Error {
                    during: format!("monitoring {}", entry.id),
                    message: e.to_string(),
                });
                report.errors.push(format!("{}: {e}", entry.id));
            }
        }
        Ok(report)
    }

    /// Claims an entry for this monitor pass; `None` while another pass of this engine
    /// works on it (an embedder's overlapping ticks), which would otherwise judge, drain or
    /// abandon the same node at the same time.
    pub(super) fn claim(&self, entry: &str) -> Option<Mark<'_, C, K, T, S, L>> {
        self.state()
            .monitoring
            .insert(entry.to_string())
            .then(|| Mark {
                engine: self,
                key: entry.to_string(),
                clear: |state, entry| {
                    state.monitoring.remove(entry);
                },
            })
    }

    pub(super) async fn scale_down_step(
        &self,
        entry: &Entry,
        groups: &HashMap<&str, &Group>,
        activities: &[crate::model::Activity],
        health_of: &HashMap<String, Verdict>,
        (view, candidates): (&mut Option<TickView>, &[InstanceId]),
        report: &mut TickReport,
    ) -> Result<(), Error> {
        let now = self.clock.now();
        let Some(od) = groups.get(entry.group.as_str()) else {
            return Err(CloudError::UnknownGroup {
                group: entry.group.clone(),
            }
            .into());
        };
        let Some(instance) = entry.instance.clone() else {
            return self.adopt_or_settle(entry, od).await;
        };
        if !od.holds(&instance) {
            self.transition(
                &entry.id,
                EntryState::Released,
                &format!(
                    "fallback instance {instance} left {} without Spot Guard",
                    od.name
                ),
            )
            .await?;
            self.emit(Event::EntrySettled {
                entry: entry.id.clone(),
                note: format!(
                    "fallback instance {instance} is gone from {}; nothing left to give back",
                    od.name
                ),
            });
            report.released.push(entry.id.clone());
            return Ok(());
        }

        let verdict = health_of
            .get(&entry.spot_group)
            .cloned()
            .unwrap_or(Verdict::Wait(vec![Reason::GroupMissing {
                group: entry.spot_group.clone(),
            }]));
        if !self.judge(entry, Check::Health, verdict, report).await? {
            return Ok(());
        }
        if view.is_none() {
            let cluster = self.cluster.snapshot().await?;
            let safety = {
                let index = SafetyIndex::new(&cluster, &self.config);
                candidates
                    .iter()
                    .map(|i| (i.clone(), index.check(i)))
                    .collect()
            };
            *view = Some(TickView { cluster, safety });
        }
        let TickView { cluster, safety } = view.as_ref().expect("view just built");
        let spot = groups.get(entry.spot_group.as_str()).copied();
        let since = self.state().healthy_since.get(&entry.spot_group).copied();
        let verdict = match spot {
            Some(g) => stability(g, activities, since, cluster, now, &self.config),
            None => Verdict::Wait(vec![Reason::GroupMissing {
                group: entry.spot_group.clone(),
            }]),
        };
        if !self.judge(entry, Check::Stability, verdict, report).await? {
            return Ok(());
        }
        let verdict = match safety.get(&instance) {
            Some(v) => v.clone(),
            None => SafetyIndex::new(cluster, &self.config).check(&instance),
        };
        let node = cluster.node_for_instance(&instance).map(|n| n.name.clone());
        if !self.judge(entry, Check::Safety, verdict, report).await? {
            return Ok(());
        }
        let Some(node) = node else {
            return Ok(());
        };

        // Go: taint, cordon, drain, then terminate with decrement.
        let entry = if entry.state == EntryState::Draining {
            entry.clone()
        } else {
            match self.start_scale_down(&entry.id, &node).await? {
                Some(started) => started,
                None => return Ok(()),
            }
        };
        let entry = &entry;
        self.emit(Event::ScaleDownStarted {
            entry: entry.id.clone(),
            node: node.clone(),
        });
        self.taint(&node).await?;
        self.cluster.set_unschedulable(&node, true).await?;
        self.emit(Event::Cordoned { node: node.clone() });
        *view = None;
        let drained = self.drain(&node).await?;
        if !drained.is_complete() {
            report.draining.push(entry.id.clone());
            return Ok(());
        }
        // Under both groups' locks, on the groups as they are now: phase 1 may be raising
        // the on-demand group, or the spot group (which would make it unhealthy again).
        let spot_group = entry.spot_group.as_str();
        let remove = async {
            let names = [od.name.clone(), entry.spot_group.clone()];
            let fresh = self.cloud.describe_groups(&names).await?;
            let (g, spot) = (named(&fresh, &od.name)?, named(&fresh, spot_group)?);
            let verdict = health(spot, activities, self.clock.now(), &self.config);
            if !verdict.is_go() {
                return Ok(Removal::Relapsed(verdict));
            }
            let how = if !g.holds(&instance) {
                format!(
                    "fallback instance {instance} left {} while it was drained",
                    od.name
                )
            } else {
                // The commit point: recorded only if this is still the scale-down that
                // drained the node (none abandoned it and reopened the node meanwhile).
                if !self.commit_scale_down(entry, &instance).await? {
                    return Ok(Removal::Superseded);
                }
                match self.terminate_locked(g, &instance).await? {
                    Ok(true) => format!("terminated {instance} with decrement"),
                    Ok(false) => format!(
                        "terminated {instance} without decrement ({} at its minimum)",
                        od.name
                    ),
                    Err(e) => {
                        let e = Error::from(e);
                        // Refused for good: the node may be opened again. A retryable failure
                        // (a timeout among them) may still take effect: the record stays and
                        // the next pass settles from the group what happened.
                        if !e.is_transient() {
                            self.withdraw_payback(&entry.id).await?;
                        }
                        return Err(e);
                    }
                }
            };
            // Released before the locks go, so the next holder sees it given back.
            self.transition(&entry.id, EntryState::Released, &how)
                .await?;
            Ok(Removal::Done(how))
        };
        // A surplus spot instance is given back to the spot group itself: one lock.
        let removed = if od.name == spot_group {
            self.locked(spot_group, remove).await?
        } else {
            self.locked(&od.name, self.locked(spot_group, remove))
                .await?
        };
        let how = match removed {
            Removal::Done(how) => how,
            Removal::Relapsed(verdict) => {
                // Spot relapsed while the node drained: keep the fallback.
                self.judge(entry, Check::Health, verdict, report).await?;
                return Ok(());
            }
            Removal::Superseded => {
                self.emit(Event::EntrySettled {
                    entry: entry.id.clone(),
                    note: format!(
                        "scale-down of {node} superseded by another monitor pass; {instance} kept"
                    ),
                });
                return Ok(());
            }
        };
        self.emit(Event::PaidBack {
            entry: entry.id.clone(),
            group: od.name.clone(),
            how,
            held: self
                .clock
                .now()
                .duration_since(entry.created_at)
                .unwrap_or_default(),
        });
        report.released.push(entry.id.clone());
        Ok(())
    }

    /// Moves an open entry to `Draining` as a new scale-down of `node`, counted in its
    /// `scale_downs`; returns the entry as started, or `None` when it was settled or its
    /// payback committed meanwhile.
    pub(super) async fn start_scale_down(
        &self,
        id: &str,
        node: &str,
    ) -> Result<Option<Entry>, Error> {
        let now = self.clock.now();
        self.update_ledger(|l| {
            let e = l
                .get_mut(id)
                .filter(|e| e.is_open() && e.payback.is_none())?;
            e.state = EntryState::Draining;
            e.scale_downs += 1;
            e.note = format!("removing node {node}");
            e.updated_at = now;
            Some(e.clone())
        })
        .await
    }

    /// Records the termination of a drained fallback instance before it is sent, if `entry`
    /// is still the scale-down the ledger holds (same `scale_downs`, still draining): the
    /// fence that keeps a pass whose drain was abandoned meanwhile from terminating a node
    /// that is open to pods again. Returns whether it was recorded.
    pub(super) async fn commit_scale_down(
        &self,
        entry: &Entry,
        instance: &str,
    ) -> Result<bool, Error> {
        let payback = Payback::Terminate {
            instance: instance.to_string(),
        };
        let now = self.clock.now();
        self.update_ledger(|l| {
            let Some(e) = l.get_mut(&entry.id) else {
                return false;
            };
            let current = e.state == EntryState::Draining
                && e.scale_downs == entry.scale_downs
                && e.payback.as_ref().is_none_or(|p| *p == payback);
            if current {
                e.note = format!("paying back: {payback:?}");
                e.payback = Some(payback.clone());
                e.updated_at = now;
            }
            current
        })
        .await
    }

    /// Clears a recorded termination that Auto Scaling refused.
    pub(super) async fn withdraw_payback(&self, id: &str) -> Result<(), Error> {
        self.update_ledger(|l| {
            if let Some(e) = l.get_mut(id) {
                e.payback = None;
            }
        })
        .await
    }

    /// Emits a verdict; on wait, abandons a scale-down in progress (untaint, uncordon) unless
    /// only PDBs hold it (the drain itself waits for those).
    pub(super) async fn judge(
        &self,
        entry: &Entry,
        check: Check,
        verdict: Verdict,
        report: &mut TickReport,
    ) -> Result<bool, Error> {
        self.emit(Event::Verdict {
            entry: entry.id.clone(),
            check,
            verdict: verdict.clone(),
        });
        if verdict.is_go() {
            return Ok(true);
        }
        let only_pdbs = verdict
            .reasons()
            .iter()
            .all(|r| matches!(r, Reason::PdbBlocks { .. }))
            && check == Check::Safety;
        if entry.state == EntryState::Draining && !only_pdbs {
            self.abandon_scale_down(entry).await?;
        }
        if entry.state == EntryState::Draining && only_pdbs {
            // Pods are on their way out; keep draining.
            return Ok(true);
        }
        report.waiting.push((entry.id.clone(), verdict));
        Ok(false)
    }

    /// Abandons a scale-down in progress: fences it off in the ledger first (a pass still
    /// draining the node, in this process or a former leader, can no longer terminate it),
    /// then opens the node to pods again. Nothing to do when its termination is already
    /// committed or the entry settled.
    pub(super) async fn abandon_scale_down(&self, entry: &Entry) -> Result<(), Error> {
        let now = self.clock.now();
        let fenced = self
            .update_ledger(|l| {
                let e = l
                    .get_mut(&entry.id)
                    .filter(|e| e.state == EntryState::Draining && e.payback.is_none())?;
                e.scale_downs += 1;
                e.note = "abandoning the scale-down".into();
                e.updated_at = now;
                Some(e.scale_downs)
            })
            .await?;
        let Some(fence) = fenced else {
            return Ok(());
        };
        let snapshot = self.cluster.snapshot().await?;
        if let Some(node) = entry
            .instance
            .as_deref()
            .and_then(|i| snapshot.node_for_instance(i))
        {
            self.cluster
                .untaint(&node.name, &self.config.taint.key)
                .await?;
            self.emit(Event::Untainted {
                node: node.name.clone(),
            });
            self.cluster.set_unschedulable(&node.name, false).await?;
            self.emit(Event::Uncordoned {
                node: node.name.clone(),
            });
        }
        let now = self.clock.now();
        self.update_ledger(|l| {
            if let Some(e) = l
                .get_mut(&entry.id)
                .filter(|e| e.state == EntryState::Draining && e.scale_downs == fence)
            {
                e.state = EntryState::Active;
                e.note = "scale-down abandoned: spot no longer healthy and stable".into();
                e.updated_at = now;
            }
        })
        .await
    }

    /// A fallback entry without an instance: adopt a new unclaimed instance of the group, or,
    /// once stale, lower the unfilled slot it left.
    pub(super) async fn adopt_or_settle(&self, entry: &Entry, od: &Group) -> Result<(), Error> {
        let now = self.clock.now();
        // Phase 1 (possibly in an agent process) may still be waiting for this instance:
        // leave it the whole wait before adopting on its behalf.
        let since_update = now.duration_since(entry.updated_at).unwrap_or_default();
        if since_update < self.config.timings.scale_up_timeout + self.config.timings.asg_poll {
            return Ok(());
        }
        let id = entry.id.clone();
        let found = self
            .update_ledger(|l| {
                let claimed = l.claimed_instances();
                let new = od
                    .instances
                    .iter()
                    .find(|i| {
                        i.is_serving()
                            && !claimed.contains(&i.id)
                            && !entry.instances_before.contains(&i.id)
                    })
                    .map(|i| i.id.clone());
                if let (Some(e), Some(new)) = (l.get_mut(&id), &new) {
                    e.instance = Some(new.clone());
                    e.note = "fallback instance adopted by the monitor".into();
                    e.updated_at = now;
                }
                new
            })
            .await?;
        if let Some(instance) = found {
            self.emit(Event::EntrySettled {
                entry: entry.id.clone(),
                note: format!("adopted fallback instance {instance}"),
            });
            return Ok(());
        }
        let age = now.duration_since(entry.created_at).unwrap_or_default();
        if age >= self.config.timings.stale_after {
            if self.settle_recorded_payback(entry, od).await? {
                return Ok(());
            }
            let note = if self.lower_unfilled(&od.name, &entry.id).await? {
                "no instance ever came; lowered desired capacity by the unfilled slot"
            } else {
                "no instance ever came and no unfilled slot is left"
            };
            self.transition(&entry.id, EntryState::Released, note)
                .await?;
            self.emit(Event::EntrySettled {
                entry: entry.id.clone(),
                note: note.into(),
            });
        }
        Ok(())
    }

    /// A pending entry younger than the scale-up timeout may belong to a scale-up in progress
    /// in another process; it is left alone until then.
    pub(super) fn pending_is_stale(&self, entry: &Entry, now: SystemTime) -> bool {
        now.duration_since(entry.created_at).unwrap_or_default()
            >= self.config.timings.scale_up_timeout
    }

    /// A pending entry (intent written, outcome of the call unknown, e.g. after a crash):
    /// decide from the group whether the increase happened.
    pub(super) async fn settle_pending(
        &self,
        entry: &Entry,
        groups: &HashMap<&str, &Group>,
    ) -> Result<bool, Error> {
        let Some(g) = groups.get(entry.group.as_str()) else {
            return Err(CloudError::UnknownGroup {
                group: entry.group.clone(),
            }
            .into());
        };
        let new_instance = g
            .instances
            .iter()
            .any(|i| !entry.instances_before.contains(&i.id));
        let raised = g.desired > entry.desired_before || new_instance;
        let (state, note) = if raised {
            (
                EntryState::Active,
                format!(
                    "recovered: {} was raised (desired {} → {})",
                    g.name, entry.desired_before, g.desired
                ),
            )
        } else {
            (
                EntryState::Released,
                format!("recovered: {} was never raised", g.name),
            )
        };
        self.transition(&entry.id, state, &note).await?;
        self.emit(Event::EntrySettled {
            entry: entry.id.clone(),
            note,
        });
        Ok(raised)
    }

    /// An active pre-scale whose phase 1 no longer runs (crash, restart): finish it.
    pub(super) async fn settle_prescale(
        &self,
        entry: &Entry,
        groups: &HashMap<&str, &Group>,
    ) -> Result<(), Error> {
        let t = &self.config.timings;
        let grace = t.scale_up_timeout + self.config.drain.timeout + t.monitor_interval;
        let age = self
            .clock
            .now()
            .duration_since(entry.updated_at)
            .unwrap_or_default();
        if age < grace {
            return Ok(()); // phase 1 may still be running in another process
        }
        let Some(spot) = groups.get(entry.group.as_str()) else {
            return Err(CloudError::UnknownGroup {
                group: entry.group.clone(),
            }
            .into());
        };
        if self.settle_recorded_payback(entry, spot).await? {
            return Ok(());
        }
        if spot.holds(&entry.at_risk_instance) {
            // Resume: the at-risk node is still there; drain it (the replacement was asked
            // for long ago), then pay back.
            let snapshot = self.cluster.snapshot().await?;
            if let Some(node) = snapshot.node_for_instance(&entry.at_risk_instance) {
                let node = node.name.clone();
                self.taint(&node).await?;
                if !self.drain(&node).await?.is_complete() {
                    return Ok(());
                }
            }
        }
        self.emit(Event::EntrySettled {
            entry: entry.id.clone(),
            note: "resuming an interrupted pre-scale".into(),
        });
        self.pay_back_prescale(&entry.id, &entry.group, &entry.at_risk_instance)
            .await
            .map(|_| ())
    }
    /// The monitor, as the leading controller and the simulator run it: [`recover`](Self::recover)
    /// once, then a [`monitor_tick`](Self::monitor_tick) at once and every
    /// `timings.monitor_interval`, and a [`cleanup`](Self::cleanup) every
    /// `timings.cleanup_interval` (the first one interval after the start), one step at a
    /// time, on the engine's [`Clock`]. A step that overruns its interval delays the next
    /// rather than bunching them; a tick comes before a cleanup due at the same time.
    ///
    /// Returns when `stop` completes. `stop` is watched between steps only: a step under way
    /// finishes first, so a stopping leader never leaves a pass half-done on purpose.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the step under way, with the guarantees of
    /// [`monitor_tick`](Self::monitor_tick), [`recover`](Self::recover) and
    /// [`cleanup`](Self::cleanup).
    pub async fn run_monitor(&self, stop: impl Future<Output = ()>, hooks: &impl MonitorHooks) {
        let mut stop = pin!(stop);
        let recovered = self.recover().await;
        hooks.recovered(&recovered).await;
        let Timings {
            monitor_interval,
            cleanup_interval,
            ..
        } = self.config.timings;
        let start = self.clock.now();
        let (mut next_tick, mut next_cleanup) = (start, start + cleanup_interval);
        loop {
            let now = self.clock.now();
            let due = next_tick.min(next_cleanup);
            if let Ok(wait) = due.duration_since(now) {
                if !wait.is_zero() {
                    let sleep = pin!(self.clock.sleep(wait));
                    if let Either::Left(_) = select(stop.as_mut(), sleep).await {
                        return;
                    }
                    continue;
                }
            }
            if futures::poll!(stop.as_mut()).is_ready() {
                return;
            }
            if next_tick <= now {
                let ticked = self.monitor_tick().await;
                hooks.ticked(&ticked).await;
                next_tick = next_due(next_tick, monitor_interval, self.clock.now());
            } else {
                let cleaned = self.cleanup().await;
                hooks.cleaned(&cleaned).await;
                next_cleanup = next_due(next_cleanup, cleanup_interval, self.clock.now());
            }
        }
    }
}
