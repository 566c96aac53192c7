//! Phase 1: a notice (rebalance recommendation or interruption) taken from the at-risk node
//! to its replacement — spot first, then the on-demand fallback — then the drain and the
//! payback of the spot pre-scale.

use super::*;

impl<C: Cloud, K: Cluster, T: Clock, S: LedgerStore, L: ScaleLock> Engine<C, K, T, S, L> {
    /// Phase 1, one attempt: acts on a rebalance recommendation or interruption notice.
    ///
    /// Concurrent calls for different instances raise the spot group by exactly one each
    /// (the group's [`ScaleLock`] serializes every change of its desired capacity); a call for
    /// an instance already being handled returns [`RebalanceOutcome::Coalesced`]. An error is
    /// reported as [`Event::NoticeRejected`] and not retried: the daemon calls
    /// [`Engine::handle_notice`], which retries transient errors.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any await point (an embedder's timeout, an aborted task) ends
    /// the instance's in-flight mark and gives up a scale lock it holds
    /// ([`ScaleLock::release_abandoned`]); the ledger holds whatever was raised (a `Pending`
    /// entry if the call's outcome was not seen), which the next attempt, [`Engine::recover`]
    /// or the monitor settles. `proptests::every_flow_cancelled_at_every_await_point_*`
    /// drops it after each number of polls in turn and checks that.
    pub async fn handle_rebalance(&self, notice: &Notice) -> Result<RebalanceOutcome, Error> {
        let Some(_mark) = self.begin(notice) else {
            return Ok(RebalanceOutcome::Coalesced);
        };
        let result = self.rebalance(notice).await;
        if let Err(e) = &result {
            self.emit(Event::NoticeRejected {
                instance: notice.instance_id.clone(),
                reason: e.to_string(),
            });
        }
        result
    }

    /// Phase 1 with retries: like [`Engine::handle_rebalance`], but an attempt that fails on
    /// a transient error ([`Error::is_transient`]) is tried again after a pause
    /// (`notice_retry.backoff`, doubling up to `notice_retry.max_backoff`), until it
    /// succeeds, the error is permanent (the instance or its node is gone, a policy refuses),
    /// the notice's interruption time would pass before the next attempt, or
    /// `notice_retry.attempts` were made ([`Event::NoticeAbandoned`]). The instance stays
    /// in flight meanwhile: notices for it are merged, the monitor leaves its entries alone.
    /// A retry resumes the pre-scale the ledger holds for the instance; it never raises a
    /// group a second time.
    ///
    /// Cancel-safe, as [`Engine::handle_rebalance`].
    pub async fn handle_notice(&self, notice: &Notice) -> Result<RebalanceOutcome, Error> {
        let Some(_mark) = self.begin(notice) else {
            return Ok(RebalanceOutcome::Coalesced);
        };
        let retry = &self.config.notice_retry;
        let instance = notice.instance_id.clone();
        let mut pause = retry.backoff;
        let mut attempt = 1;
        loop {
            let e = match self.rebalance(notice).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) => e,
            };
            let reason = e.to_string();
            if !e.is_transient() {
                self.emit(Event::NoticeRejected { instance, reason });
                return Err(e);
            }
            let deadline = self.deadline(notice);
            let too_late = deadline.is_some_and(|d| self.clock.now() + pause >= d);
            if attempt >= retry.attempts || too_late {
                self.emit(Event::NoticeAbandoned {
                    instance,
                    attempts: attempt,
                    reason,
                });
                return Err(e);
            }
            self.emit(Event::NoticeRetrying {
                instance: instance.clone(),
                attempt,
                after: pause,
                reason,
            });
            self.clock.sleep(pause).await;
            pause = (pause * 2).min(retry.max_backoff);
            attempt += 1;
        }
    }

    /// Reports the notice and marks its instance in flight; `None` when it already was (the
    /// notice's interruption time, if any, is merged into the running action).
    pub(super) fn begin(&self, notice: &Notice) -> Option<Mark<'_, C, K, T, S, L>> {
        let instance = notice.instance_id.clone();
        self.emit(Event::NoticeReceived {
            instance: instance.clone(),
            kind: match notice.kind {
                NoticeKind::Rebalance => "rebalance".into(),
                NoticeKind::Interruption { .. } => "interruption".into(),
            },
        });
        if !self.state().in_flight.insert(instance.clone()) {
            if let Some(deadline) = notice.deadline() {
                let mut state = self.state();
                let known = state.deadlines.entry(instance.clone()).or_insert(deadline);
                *known = (*known).min(deadline);
            }
            self.emit(Event::NoticeCoalesced { instance });
            return None;
        }
        // Cleared with any interruption time learned for the instance.
        Some(Mark {
            engine: self,
            key: instance,
            clear: |state, instance| {
                state.in_flight.remove(instance);
                state.deadlines.remove(instance);
            },
        })
    }

    /// The earliest interruption time known for the notice's instance.
    pub(super) fn deadline(&self, notice: &Notice) -> Option<SystemTime> {
        let learned = self.state().deadlines.get(&notice.instance_id).copied();
        earlier(notice.deadline(), learned)
    }

    /// The spot group holding `instance`, its pair, and whether the policy lets Spot Guard
    /// scale it.
    pub(super) async fn scaling_target(&self, instance: &str) -> Result<Target, Error> {
        let groups = self
            .cloud
            .describe_groups(&self.config.group_names())
            .await?;
        let Some((pair, spot)) = self.config.groups.iter().find_map(|p| {
            groups
                .iter()
                .find(|g| g.name == p.spot && g.holds(instance))
                .map(|g| (p.clone(), g.clone()))
        }) else {
            return Err(Error::UnknownInstance {
                instance: instance.to_string(),
                groups: self
                    .config
                    .groups
                    .iter()
                    .map(|p| p.spot.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let drain_only = spot.capacity_rebalance
            && match self.config.capacity_rebalance {
                CapacityRebalancePolicy::Refuse => {
                    return Err(Error::CapacityRebalanceEnabled { group: spot.name });
                }
                CapacityRebalancePolicy::DrainOnly => true,
            };
        Ok(Target {
            pair,
            spot,
            drain_only,
        })
    }

    /// The node of `instance` in the snapshot.
    pub(super) fn node_of(snapshot: &ClusterView, instance: &str) -> Result<String, Error> {
        snapshot
            .node_for_instance(instance)
            .map(|n| n.name.clone())
            .ok_or_else(|| Error::NoNode {
                instance: instance.to_string(),
            })
    }

    pub(super) async fn taint(&self, node: &str) -> Result<(), Error> {
        self.cluster.taint(node, &self.config.taint.taint()).await?;
        self.emit(Event::Tainted {
            node: node.to_string(),
        });
        Ok(())
    }

    pub(super) async fn rebalance(&self, notice: &Notice) -> Result<RebalanceOutcome, Error> {
        if let Some(deadline) = notice.deadline() {
            return self.interruption(notice, deadline).await;
        }
        let instance = notice.instance_id.as_str();
        let target = self.scaling_target(instance).await?;
        let snapshot = self.cluster.snapshot().await?;
        let node = Self::node_of(&snapshot, instance)?;

        // Taint first: nothing new lands on the node while the replacement comes.
        self.taint(&node).await?;
        let start = self.clock.now();
        let (replacement, prescale) = self
            .seek_replacement(&target, instance, start, None)
            .await?;
        let protected = self.protect(&replacement, &snapshot).await;

        // An interruption notice merged into this action since makes it drain whatever came.
        let interruption = self.state().deadlines.contains_key(instance);
        let result = match &replacement {
            Replacement::None { reason } if !interruption => {
                // Continue with the existing node: give the pre-scale back, remove the taint.
                if let Some(entry) = &prescale {
                    self.give_back_unfilled(entry, &target.pair.spot).await?;
                }
                self.cluster.untaint(&node, &self.config.taint.key).await?;
                self.emit(Event::Untainted { node: node.clone() });
                self.emit(Event::NoReplacement {
                    node: node.clone(),
                    reason: reason.clone(),
                });
                RebalanceOutcome::Handled {
                    node,
                    replacement: replacement.clone(),
                    drain: None,
                    paid_back: prescale.is_some(),
                }
            }
            _ => {
                if let Replacement::None { reason } = &replacement {
                    self.emit(Event::NoReplacement {
                        node: node.clone(),
                        reason: format!("{reason}; draining anyway before the interruption"),
                    });
                }
                let report = self.drain(&node).await?;
                let paid_back = self
                    .settle_drained(
                        instance,
                        Some(&target),
                        prescale.as_deref(),
                        &report,
                        interruption,
                    )
                    .await?;
                RebalanceOutcome::Handled {
                    node,
                    replacement: replacement.clone(),
                    drain: Some(report),
                    paid_back,
                }
            }
        };
        if let Some(node) = protected {
            self.unprotect(&node).await;
        }
        Ok(result)
    }

    /// An interruption notice (invariant 7): the node is tainted and drained whatever else
    /// fails or is unknown — the instance's group, its Capacity Rebalancing policy, the Auto
    /// Scaling API. Replacement capacity is sought best effort: the drain starts as soon as
    /// that is settled, and at the latest `interruption_drain_window` before the
    /// interruption, the search going on beside it.
    pub(super) async fn interruption(
        &self,
        notice: &Notice,
        deadline: SystemTime,
    ) -> Result<RebalanceOutcome, Error> {
        let instance = notice.instance_id.as_str();
        let snapshot = self.cluster.snapshot().await?;
        let node = Self::node_of(&snapshot, instance)?;
        self.taint(&node).await?;
        let start = self.clock.now();
        let latest = self.drain_start(deadline);
        let scaling = async {
            let target = match self.scaling_target(instance).await {
                Ok(target) => target,
                Err(e) => {
                    self.emit(Event::ScalingSkipped {
                        instance: instance.to_string(),
                        reason: e.to_string(),
                    });
                    return Ok((
                        None,
                        Replacement::Skipped {
                            reason: e.to_string(),
                        },
                        None,
                    ));
                }
            };
            let (replacement, prescale) = self
                .seek_replacement(&target, instance, start, Some(latest))
                .await?;
            Ok::<_, Error>((Some(target), replacement, prescale))
        };
        let mut scaling = pin!(scaling);
        let drain_at = latest.duration_since(start).unwrap_or_default();
        let timer = pin!(self.clock.sleep(drain_at));
        let (scaled, report) = match select(scaling.as_mut(), timer).await {
            Either::Left((scaled, _)) => {
                let report = self.drain(&node).await;
                (scaled, report)
            }
            // Time to drain: the search goes on beside the drain.
            Either::Right(((), _)) => join(scaling, self.drain(&node)).await,
        };
        let report = report?;
        let (target, replacement, prescale) = match scaled {
            Ok(scaled) => scaled,
            Err(e) => {
                self.emit(Event::Error {
                    during: format!("seeking a replacement for interrupted instance {instance}"),
                    message: e.to_string(),
                });
                (
                    None,
                    Replacement::None {
                        reason: e.to_string(),
                    },
                    None,
                )
            }
        };
        if let Replacement::None { reason } = &replacement {
            self.emit(Event::NoReplacement {
                node: node.clone(),
                reason: format!("{reason}; drained before the interruption"),
            });
        }
        let paid_back = self
            .settle_drained(
                instance,
                target.as_ref(),
                prescale.as_deref(),
                &report,
                true,
            )
            .await?;
        Ok(RebalanceOutcome::Handled {
            node,
            replacement,
            drain: Some(report),
            paid_back,
        })
    }

    /// Raises the spot group (or resumes the pre-scale the ledger holds for the instance),
    /// waits for a new instance, and falls back to on-demand when spot fails. Returns what
    /// stood in and the pre-scale entry, if one was made.
    pub(super) async fn seek_replacement(
        &self,
        target: &Target,
        instance: &str,
        start: SystemTime,
        latest: Option<SystemTime>,
    ) -> Result<(Replacement, Option<String>), Error> {
        if target.drain_only {
            return Ok((Replacement::NotAttempted, None));
        }
        let pair = &target.pair;
        let mut prescale: Option<String> = None;
        // A pre-scale already made for this instance (an earlier attempt, or a notice whose
        // payback failed) is resumed, never made twice.
        let raised = match self.open_prescale(instance, &target.spot).await? {
            Some((raised, Some(ready))) => {
                prescale = Some(raised.entry);
                Err(Ok(ready))
            }
            Some((raised, None)) => Ok(raised),
            None => self
                .raise(EntryKind::Prescale, &pair.spot, pair, instance)
                .await
                .map_err(Err),
        };
        let spot_result = match raised {
            Ok(raised) => {
                prescale = Some(raised.entry.clone());
                match self
                    .wait_for_instance(&pair.spot, &raised, start, latest, instance)
                    .await
                {
                    Ok(Ok(new)) => Ok(new),
                    Ok(Err(end)) => Err(end),
                    Err(e) => Err(WaitEnd::Failed(e.to_string())),
                }
            }
            Err(Ok(ready)) => Ok(ready),
            Err(Err(e)) => Err(WaitEnd::Failed(e.to_string())),
        };
        let replacement = match spot_result {
            Ok(new) => Replacement::Spot { instance: new },
            Err(WaitEnd::NoTime) => Replacement::Launching {
                group: pair.spot.clone(),
            },
            Err(end) => {
                self.emit(Event::ScaleUpFailed {
                    group: pair.spot.clone(),
                    reason: end.describe(),
                });
                self.fall_back(pair, instance, start, latest).await
            }
        };
        // A new instance that arrived after the spot wait ended counts as a replacement.
        let replacement = match replacement {
            Replacement::None { reason } if prescale.is_some() => {
                self.adopt_late_spot(pair, prescale.as_deref(), reason)
                    .await?
            }
            other => other,
        };
        Ok((replacement, prescale))
    }

    /// After the drain: pays the spot pre-scale back, or hands a drained instance with
    /// nothing to pay back to its group. Returns whether the pre-scale was paid back.
    pub(super) async fn settle_drained(
        &self,
        instance: &str,
        target: Option<&Target>,
        prescale: Option<&str>,
        report: &DrainReport,
        interruption: bool,
    ) -> Result<bool, Error> {
        let Some(target) = target else {
            return Ok(false);
        };
        match (prescale, report.is_complete() || interruption) {
            (Some(entry), true) => {
                self.pay_back_prescale(entry, &target.pair.spot, instance)
                    .await
            }
            (None, true) if !target.drain_only => {
                // Nothing to pay back (the spot group could not be raised): hand the drained
                // instance back to its group, which replaces it, rather than keep a tainted,
                // empty node that EC2 may never reclaim.
                self.recycle(instance).await;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// An open pre-scale for this at-risk instance, with its replacement when that is already
    /// InService in the group.
    pub(super) async fn open_prescale(
        &self,
        at_risk: &str,
        spot: &Group,
    ) -> Result<Option<(Raised, Option<InstanceId>)>, Error> {
        let mut ledger = self.store.load().await?.value;
        // An intent an earlier attempt left pending (its call's outcome unknown): settle it
        // from the group first, under the lock, so a retry neither raises twice nor loses it.
        let pending = ledger
            .open()
            .find(|e| {
                e.kind == EntryKind::Prescale
                    && e.at_risk_instance == at_risk
                    && e.state == EntryState::Pending
            })
            .cloned();
        if let Some(entry) = pending {
            self.locked(&entry.group, async {
                let g = self.describe(&entry.group).await?;
                let by_name = HashMap::from([(g.name.as_str(), &g)]);
                self.settle_pending(&entry, &by_name).await
            })
            .await?;
            ledger = self.store.load().await?.value;
        }
        let found = ledger
            .open()
            .find(|e| {
                e.kind == EntryKind::Prescale
                    && e.at_risk_instance == at_risk
                    && e.state != EntryState::Pending
            })
            .map(|e| {
                let ready = e
                    .instance
                    .clone()
                    .filter(|i| spot.instances.iter().any(|x| &x.id == i && x.is_serving()));
                (
                    Raised {
                        entry: e.id.clone(),
                        instances_before: e.instances_before.clone(),
                    },
                    ready,
                )
            });
        Ok(found)
    }

    /// Spot failed: raise the on-demand group, wait, and record the fallback.
    pub(super) async fn fall_back(
        &self,
        pair: &GroupPair,
        at_risk: &str,
        start: SystemTime,
        latest: Option<SystemTime>,
    ) -> Replacement {
        let raised = match self
            .raise(EntryKind::Fallback, &pair.on_demand, pair, at_risk)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("on-demand scale-up of {} not made: {e}", pair.on_demand);
                self.emit(Event::ScaleUpFailed {
                    group: pair.on_demand.clone(),
                    reason: e.to_string(),
                });
                return Replacement::None { reason };
            }
        };
        self.emit(Event::FallbackRecorded {
            entry: raised.entry.clone(),
            group: pair.on_demand.clone(),
        });
        let waited = self
            .wait_for_instance(&pair.on_demand, &raised, start, latest, at_risk)
            .await;
        match waited {
            Ok(Ok(instance)) => Replacement::OnDemand {
                instance,
                entry: raised.entry,
            },
            Ok(Err(WaitEnd::NoTime)) => Replacement::Launching {
                group: pair.on_demand.clone(),
            },
            Ok(Err(end)) => {
                // The entry stays Active: the monitor adopts a late instance or settles it.
                self.emit(Event::ScaleUpFailed {
                    group: pair.on_demand.clone(),
                    reason: end.describe(),
                });
                Replacement::None {
                    reason: format!(
                        "spot and on-demand both failed; on-demand {}",
                        end.describe()
                    ),
                }
            }
            Err(e) => Replacement::None {
                reason: format!("waiting for on-demand failed: {e}"),
            },
        }
    }

    /// After both waits failed, a spot instance may still have come just now.
    pub(super) async fn adopt_late_spot(
        &self,
        pair: &GroupPair,
        prescale: Option<&str>,
        reason: String,
    ) -> Result<Replacement, Error> {
        let ledger = self.store.load().await?.value;
        let Some(entry) = prescale.and_then(|id| ledger.get(id)) else {
            return Ok(Replacement::None { reason });
        };
        let raised = Raised {
            entry: entry.id.clone(),
            instances_before: entry.instances_before.clone(),
        };
        let g = self.describe(&pair.spot).await?;
        Ok(match self.claim_new_instance(&g, &raised).await? {
            Some(instance) => Replacement::Spot { instance },
            None => Replacement::None { reason },
        })
    }

    /// Marks a fresh replacement node so cluster-autoscaler leaves it alone during the action.
    pub(super) async fn protect(
        &self,
        replacement: &Replacement,
        snapshot: &ClusterView,
    ) -> Option<String> {
        let key = &self.config.protect_annotation;
        let instance = match replacement {
            Replacement::Spot { instance } | Replacement::OnDemand { instance, .. } => instance,
            _ => return None,
        };
        if key.is_empty() {
            return None;
        }
        let node = match snapshot.node_for_instance(instance) {
            Some(n) => n.name.clone(),
            None => self
                .cluster
                .snapshot()
                .await
                .ok()?
                .node_for_instance(instance)?
                .name
                .clone(),
        };
        match self.cluster.annotate(&node, key, Some("true".into())).await {
            Ok(()) => Some(node),
            Err(e) => {
                self.emit(Event::Error {
                    during: format!("protecting replacement node {node}"),
                    message: e.to_string(),
                });
                None
            }
        }
    }

    pub(super) async fn unprotect(&self, node: &str) {
        if let Err(e) = self
            .cluster
            .annotate(node, &self.config.protect_annotation, None)
            .await
        {
            self.emit(Event::Error {
                during: format!("removing protection from node {node}"),
                message: e.to_string(),
            });
        }
    }

    pub(super) async fn drain(&self, node: &str) -> Result<DrainReport, Error> {
        let report = self.cluster.drain(node, &self.config.drain).await?;
        if report.is_complete() {
            self.emit(Event::Drained {
                node: node.to_string(),
                evicted: report.evicted(),
            });
        } else {
            self.emit(Event::DrainIncomplete {
                node: node.to_string(),
                remaining: report.remaining(),
            });
        }
        Ok(report)
    }

    /// Pays the spot pre-scale back: terminate the drained at-risk instance with decrement
    /// (or, when it is already gone, lower desired capacity by the unfilled slot).
    pub(super) async fn pay_back_prescale(
        &self,
        entry: &str,
        spot_group: &str,
        at_risk: &str,
    ) -> Result<bool, Error> {
        if !self.config.payback_prescale {
            self.transition(
                entry,
                EntryState::Released,
                "payback disabled by configuration; pre-scale kept",
            )
            .await?;
            return Ok(false);
        }
        let paid = self.locked(spot_group, async {
            // Under the lock, from the ledger as it is now: another flow for the same
            // instance (a second agent, the monitor resuming it) may have paid it back.
            let Some(open) = self.open_entry(entry).await? else {
                return Ok(None);
            };
            let g = self.describe(spot_group).await?;
            let how = if let Some(p) = open.payback.as_ref().filter(|p| p.is_done(&g)) {
                format!("{p:?} took effect before its outcome was recorded; paid back")
            } else if g.holds(at_risk) {
                self.record_payback(
                    entry,
                    Payback::Terminate {
                        instance: at_risk.to_string(),
                    },
                )
                .await?;
                match self.terminate_locked(&g, at_risk).await? {
                    Ok(true) => format!("terminated {at_risk} with decrement"),
                    Ok(false) => {
                        format!("terminated {at_risk} without decrement (group at its minimum)")
                    }
                    Err(CloudError::UnknownInstance { .. }) => {
                        match self
                            .lower_or_note_locked(spot_group, at_risk, entry)
                            .await?
                        {
                            Some(how) => how,
                            None => return Ok(None),
                        }
                    }
                    Err(e) => {
                        self.emit(Event::Error {
                            during: format!("paying back {entry}"),
                            message: e.to_string(),
                        });
                        return Ok(None);
                    }
                }
            } else {
                match self
                    .lower_or_note_locked(spot_group, at_risk, entry)
                    .await?
                {
                    Some(how) => how,
                    None => return Ok(None),
                }
            };
            // Released before the lock goes, so the next holder sees it paid back.
            let held = self.transition(entry, EntryState::Released, &how).await?;
            Ok(Some((how, held)))
        });
        let Some((how, held)) = paid.await? else {
            return Ok(false);
        };
        self.emit(Event::PaidBack {
            entry: entry.to_string(),
            group: spot_group.to_string(),
            how,
            held,
        });
        Ok(true)
    }

    /// The entry as the ledger holds it now, if it is still open.
    pub(super) async fn open_entry(&self, id: &str) -> Result<Option<Entry>, Error> {
        let ledger = self.store.load().await?.value;
        Ok(ledger.get(id).filter(|e| e.is_open()).cloned())
    }

    /// Terminates a drained at-risk instance without decrement: the group launches a fresh
    /// one in its place, keeping its size.
    pub(super) async fn recycle(&self, instance: &str) {
        match self.cloud.terminate_instance(instance, false).await {
            Ok(()) | Err(CloudError::UnknownInstance { .. }) => {}
            Err(e) => self.emit(Event::Error {
                during: format!("handing drained instance {instance} back to its group"),
                message: e.to_string(),
            }),
        }
    }

    /// Records a payback call before it is made (state `Draining`): if its outcome is lost
    /// (crash, failed save), settlement sees from the group that it took effect.
    pub(super) async fn record_payback(&self, entry: &str, payback: Payback) -> Result<(), Error> {
        let now = self.clock.now();
        self.update_ledger(|l| {
            if let Some(e) = l.get_mut(entry) {
                e.note = format!("paying back: {payback:?}");
                e.payback = Some(payback.clone());
                e.state = EntryState::Draining;
                e.updated_at = now;
            }
        })
        .await
    }

    /// Releases an entry whose recorded payback the group shows as done.
    pub(super) async fn settle_recorded_payback(
        &self,
        entry: &Entry,
        group: &Group,
    ) -> Result<bool, Error> {
        let Some(payback) = entry.payback.as_ref().filter(|p| p.is_done(group)) else {
            return Ok(false);
        };
        let note = format!("{payback:?} took effect before its outcome was recorded; paid back");
        self.transition(&entry.id, EntryState::Released, &note)
            .await?;
        self.emit(Event::EntrySettled {
            entry: entry.id.clone(),
            note,
        });
        Ok(true)
    }

    /// The at-risk instance is gone: lower the unfilled slot it left, or, when the group has
    /// already replaced it, hand the surplus instance to the monitor (`None`).
    pub(super) async fn lower_or_note_locked(
        &self,
        group: &str,
        at_risk: &str,
        entry: &str,
    ) -> Result<Option<String>, Error> {
        if self.lower_unfilled_locked(group, entry).await? {
            return Ok(Some(format!(
                "{at_risk} already gone; lowered desired capacity by one"
            )));
        }
        let now = self.clock.now();
        let note = format!(
            "{at_risk} was reclaimed and replaced before the payback; the monitor gives the \
             surplus instance of {group} back"
        );
        self.update_ledger(|l| {
            if let Some(e) = l.get_mut(entry) {
                e.kind = EntryKind::Surplus;
                e.state = EntryState::Active;
                e.instance = None;
                e.instances_before = Vec::new();
                e.payback = None;
                e.note = note.clone();
                e.updated_at = now;
            }
        })
        .await?;
        self.emit(Event::EntrySettled {
            entry: entry.to_string(),
            note,
        });
        Ok(None)
    }

    /// Abandoning a pre-scale that delivered nothing: lower the unfilled slot.
    pub(super) async fn give_back_unfilled(&self, entry: &str, group: &str) -> Result<(), Error> {
        let how = if self.lower_unfilled(group, entry).await? {
            "pre-scale delivered nothing; lowered desired capacity by one".to_string()
        } else {
            "pre-scale delivered nothing and no unfilled slot is left".to_string()
        };
        let held = self.transition(entry, EntryState::Released, &how).await?;
        self.emit(Event::PaidBack {
            entry: entry.to_string(),
            group: group.to_string(),
            how,
            held,
        });
        Ok(())
    }
}
