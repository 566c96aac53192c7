//! Capacity: every change of a group's desired capacity, under the group's scale lock and
//! recorded in the ledger first, and the wait for the instance it launches.

use super::*;

impl<C: Cloud, K: Cluster, T: Clock, S: LedgerStore, L: ScaleLock> Engine<C, K, T, S, L> {
    pub(super) async fn describe(&self, group: &str) -> Result<Group, Error> {
        let groups = self.cloud.describe_groups(&[group.to_string()]).await?;
        named(&groups, group).cloned()
    }

    /// Runs `work` holding the group's scale lock; the lock is released whatever happens,
    /// this future dropped part-way included ([`LockHeld`]).
    pub(super) async fn locked<R>(
        &self,
        group: &str,
        work: impl std::future::Future<Output = Result<R, Error>>,
    ) -> Result<R, Error> {
        self.lock.acquire(group).await?;
        let held = LockHeld {
            lock: &self.lock,
            group,
        };
        let result = work.await;
        let released = self.lock.release(group).await;
        std::mem::forget(held);
        let value = result?;
        released?;
        Ok(value)
    }

    /// Raises `group` by one under its lock, with the intent recorded before the call.
    pub(super) async fn raise(
        &self,
        kind: EntryKind,
        group: &str,
        pair: &GroupPair,
        at_risk: &str,
    ) -> Result<Raised, Error> {
        self.locked(group, self.raise_locked(kind, group, pair, at_risk))
            .await
    }

    pub(super) async fn raise_locked(
        &self,
        kind: EntryKind,
        group: &str,
        pair: &GroupPair,
        at_risk: &str,
    ) -> Result<Raised, Error> {
        let g = self.describe(group).await?;
        g.bounds().check(group, g.desired.saturating_add(1))?;
        let now = self.clock.now();
        let instances_before = g.instance_ids();
        let intent = Intent {
            kind,
            group: group.to_string(),
            spot_group: pair.spot.clone(),
            at_risk_instance: at_risk.to_string(),
            desired_before: g.desired,
            instances_before: instances_before.clone(),
        };
        let entry = self
            .update_ledger(|l| l.record_intent(intent.clone(), now))
            .await?;
        if let Err(e) = self.lock.confirm(group).await {
            self.transition(
                &entry,
                EntryState::Released,
                &format!("scale-up not made: {e}"),
            )
            .await?;
            return Err(e.into());
        }
        let call = self.cloud.set_desired_capacity(group, g.desired + 1).await;
        // Settle the intent now, while we still hold the lock: an ambiguous failure (timeout,
        // 5xx after retries) is resolved by looking at the group again. When even that look
        // fails, the intent stays pending: the next attempt, or the monitor, settles it from
        // the group, so it is neither raised twice nor leaked.
        let raised = match &call {
            Ok(()) => true,
            Err(CloudError::Api {
                retryable: true, ..
            }) => self.describe(group).await?.desired > g.desired,
            Err(_) => false,
        };
        if raised {
            self.transition(&entry, EntryState::Active, "scale-up made")
                .await?;
            self.emit(Event::ScaledUp {
                group: group.to_string(),
                from: g.desired,
                to: g.desired + 1,
            });
            Ok(Raised {
                entry,
                instances_before,
            })
        } else {
            let e = call.err().map(Error::from).unwrap_or_else(|| {
                CloudError::Api {
                    operation: "SetDesiredCapacity".into(),
                    target: group.to_string(),
                    message: "desired capacity unchanged after the call".into(),
                    retryable: true,
                    source: None,
                }
                .into()
            });
            self.transition(
                &entry,
                EntryState::Released,
                &format!("scale-up not made: {e}"),
            )
            .await?;
            Err(e)
        }
    }

    /// Lowers `group` by one under its lock, never below its minimum and only while an
    /// unfilled slot exists (desired above the instances it has), so no running instance is
    /// picked by the group's termination policy.
    pub(super) async fn lower_unfilled(&self, group: &str, entry: &str) -> Result<bool, Error> {
        self.locked(group, async {
            // Another flow may have settled the entry meanwhile: never lower for it twice.
            if self.open_entry(entry).await?.is_none() {
                return Ok(false);
            }
            self.lower_unfilled_locked(group, entry).await
        })
        .await
    }

    /// [`Self::lower_unfilled`], for a caller that holds the group's lock.
    pub(super) async fn lower_unfilled_locked(
        &self,
        group: &str,
        entry: &str,
    ) -> Result<bool, Error> {
        let g = self.describe(group).await?;
        let live = g
            .instances
            .iter()
            .filter(|i| !i.lifecycle.is_leaving())
            .count() as u32;
        if g.desired > g.min && g.desired > live {
            self.record_payback(entry, Payback::Lower { from: g.desired })
                .await?;
            self.lock.confirm(group).await?;
            self.cloud
                .set_desired_capacity(group, g.desired - 1)
                .await?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Terminates an instance of `group`, decrementing its desired capacity unless the group
    /// is at its minimum, for a caller that holds the group's lock: a decrement is a change
    /// of desired capacity like any other, so no raise may read the group between it and its
    /// effect. Returns whether it decremented.
    pub(super) async fn terminate_locked(
        &self,
        group: &Group,
        instance: &str,
    ) -> Result<Result<bool, CloudError>, Error> {
        let decrement = group.desired > group.min;
        self.lock.confirm(&group.name).await?;
        Ok(self
            .cloud
            .terminate_instance(instance, decrement)
            .await
            .map(|()| decrement))
    }

    /// Polls `group` until a new instance (not there before the raise, not claimed by another
    /// entry) is InService, a launch fails, or the wait ends: `scale_up_timeout` from now, or
    /// `latest` (interruption cap) if earlier. The instance is claimed for the entry in the
    /// ledger atomically, so concurrent handlers never take the same one.
    pub(super) async fn wait_for_instance(
        &self,
        group: &str,
        raised: &Raised,
        since: SystemTime,
        latest: Option<SystemTime>,
        at_risk: &str,
    ) -> Result<Result<InstanceId, WaitEnd>, Error> {
        let start = self.clock.now();
        let timeout = start + self.config.timings.scale_up_timeout;
        // Re-read every poll: an interruption notice may arrive while this wait runs.
        let until = || match self.wait_cap(at_risk, latest) {
            Some(cap) => timeout.min(cap),
            None => timeout,
        };
        if start >= until() {
            return Ok(Err(WaitEnd::NoTime));
        }
        loop {
            let now = self.clock.now();
            let until = until();
            if now >= until {
                return Ok(Err(WaitEnd::TimedOut(
                    now.duration_since(start).unwrap_or_default(),
                )));
            }
            let pause = self
                .config
                .timings
                .asg_poll
                .min(until.duration_since(now).unwrap_or_default());
            self.clock.sleep(pause).await;
            let g = self.describe(group).await?;
            if let Some(instance) = self.claim_new_instance(&g, raised).await? {
                self.emit(Event::InstanceReady {
                    group: group.to_string(),
                    instance: instance.clone(),
                    after: self.clock.now().duration_since(start).unwrap_or_default(),
                });
                return Ok(Ok(instance));
            }
            let activities = self
                .cloud
                .scaling_activities(&[group.to_string()], since)
                .await?;
            if let Some(failed) = activities.iter().find(|a| {
                a.group == group && a.status == ActivityStatus::Failed && a.start >= since
            }) {
                let message = failed
                    .status_message
                    .clone()
                    .unwrap_or_else(|| failed.description.clone());
                return Ok(Err(WaitEnd::Failed(message)));
            }
        }
    }

    /// Records, for the entry, the first InService instance of the group that was not there
    /// before its raise and that no other open entry holds.
    pub(super) async fn claim_new_instance(
        &self,
        group: &Group,
        raised: &Raised,
    ) -> Result<Option<InstanceId>, Error> {
        let before: HashSet<&str> = raised.instances_before.iter().map(String::as_str).collect();
        let serving: Vec<InstanceId> = group
            .instances
            .iter()
            .filter(|i| i.is_serving() && !before.contains(i.id.as_str()))
            .map(|i| i.id.clone())
            .collect();
        if serving.is_empty() {
            return Ok(None);
        }
        let now = self.clock.now();
        self.update_ledger(|l| {
            // Already claimed for this entry (by the monitor of another process): take it.
            if let Some(mine) = l.get(&raised.entry).and_then(|e| e.instance.clone()) {
                if serving.contains(&mine) {
                    return Some(mine);
                }
            }
            let claimed = l.claimed_instances();
            let free = serving.iter().find(|i| !claimed.contains(i))?.clone();
            let e = l.get_mut(&raised.entry)?;
            e.instance = Some(free.clone());
            // Only needed to tell the new instance from the old ones: drop it once known, so
            // the stored ledger stays small on large groups.
            e.instances_before = Vec::new();
            e.note = format!("instance {free} InService");
            e.updated_at = now;
            Some(free)
        })
        .await
    }

    /// When a wait for `at_risk`'s replacement must end: the notice's own cap, or the
    /// drain window before an interruption learned since, whichever is earlier.
    pub(super) fn wait_cap(&self, at_risk: &str, latest: Option<SystemTime>) -> Option<SystemTime> {
        let learned = self.state().deadlines.get(at_risk).copied();
        earlier(latest, learned.map(|d| self.drain_start(d)))
    }

    /// When the drain must start for an interruption at `deadline`: `interruption_drain_window`
    /// before it.
    pub(super) fn drain_start(&self, deadline: SystemTime) -> SystemTime {
        deadline
            .checked_sub(self.config.timings.interruption_drain_window)
            .unwrap_or(deadline)
    }
}
