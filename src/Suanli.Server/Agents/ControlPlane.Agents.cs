using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>The agent gateway: registration, heartbeats, leases, reports and output of the providers' agents, and lost providers; every call is fenced by the agent's epoch.</summary>
public sealed partial class ControlPlane
{
    /// <summary>Registers an agent's offer under a new fencing epoch; jobs held under older epochs are handled as lost.</summary>
    public async Task<ProviderRecord> RegisterAsync(long providerId, string region, IReadOnlyList<GroupOffer> groups, string? isolation = null, bool takeOver = true)
    {
        lock (_gate)
        {
            // One agent per provider: a second one (the same key started twice) is refused while the first is alive,
            // unless it was told to take over; a takeover is logged here and the old agent learns it from its next
            // heartbeat (stale epoch).
            if (_providers.TryGetValue(providerId, out var current) && current.Record.State == ProviderStates.Ready && current.LastSeenMs is { } seen
                && NowMs - seen < Options.LostAfter.TotalMilliseconds)
            {
                if (!takeOver)
                {
                    throw new StoreConflictException("agent_live",
                        $"provider {current.Record.Name} already has a live agent (epoch {current.Record.Epoch}, heard from {(NowMs - seen) / 1000.0:F1} s ago); "
                        + "stop it, or start this one with --take-over to replace it");
                }

                ServerLog.AgentTakeOver(_log, current.Record.Name, current.Record.Epoch);
            }
        }

        var (p, orphans) = await _store.RegisterAsync(providerId, region, groups, NowMs);
        lock (_gate)
        {
            DrainInboxLocked();
            if (_providers.TryGetValue(p.Id, out var live))
            {
                live.Record = p;
                live.LastHeartbeatMs = NowMs;
                live.LastSeenMs = NowMs;
                live.Isolation = isolation;
            }
            else
            {
                _providers[p.Id] = new LiveProvider(p) { LastHeartbeatMs = NowMs, LastSeenMs = NowMs, Isolation = isolation };
            }

            _poolDirty = true;
        }

        foreach (var o in orphans)
        {
            await HandleLostAsync(o.Id, $"agent of provider {p.Name} re-registered (epoch {p.Epoch}); the earlier instance's jobs are lost");
        }

        Wake();
        return p;
    }

    /// <summary>Records a heartbeat and answers with the jobs the agent must stop (cancelled, or not its own any more).</summary>
    public async Task<(IReadOnlyList<long> Stop, IReadOnlyList<PreemptNotice> Notices)> HeartbeatAsync(long providerId, long epoch, IReadOnlyList<long> runningJobs)
    {
        await _store.HeartbeatAsync(providerId, epoch, NowMs);
        _metrics.Heartbeat(providerId);
        var stop = new List<long>();
        List<PreemptNotice> notices;
        lock (_gate)
        {
            DrainInboxLocked();
            (notices, var due) = PreemptionsLocked(providerId, NowMs);
            stop.AddRange(due);
            if (_providers.TryGetValue(providerId, out var p))
            {
                p.LastHeartbeatMs = NowMs;
                p.LastSeenMs = NowMs;
            }

            foreach (var id in runningJobs)
            {
                if (!_jobs.TryGetValue(id, out var j) || j.Record.ProviderId != providerId || j.Record.Epoch != epoch
                    || j.Record.State == JobStates.Cancelled)
                {
                    stop.Add(id);
                }
            }

            stop.AddRange(_jobs.Values.Where(j => j.Record.State == JobStates.Cancelled && j.Record.ProviderId == providerId
                && !runningJobs.Contains(j.Record.Id)).Select(j => j.Record.Id));
        }

        // A cancelled job whose agent no longer runs it has released its resources.
        foreach (var id in stop.Where(id => !runningJobs.Contains(id)))
        {
            await ReleaseCancelledAsync(id);
        }

        return (stop.Distinct().ToList(), notices);
    }

    private async Task ReleaseCancelledAsync(long id)
    {
        int? attempt = null;
        long? tenant = null;
        lock (_gate)
        {
            DrainInboxLocked();
            if (_jobs.TryGetValue(id, out var j) && j.Record.State == JobStates.Cancelled)
            {
                attempt = j.Record.Attempt;
                tenant = j.Record.TenantId;
                ReleaseLocked(j);
                _jobs.Remove(id);
            }
        }

        if (attempt is { } a && await _ledger.SettleAsync(id, new SettlePlan(a, Void: true, 0, "cancelled; no metered run reported"), Options.FeeBps, NowMs))
        {
            MoneyMoved(tenant);
        }

        Wake();
    }

    /// <summary>Jobs leased to the provider and not yet started; waits up to <paramref name="wait"/> for one to appear.</summary>
    public async Task<IReadOnlyList<LeasedJob>> LeasesAsync(long providerId, long epoch, TimeSpan wait, CancellationToken ct)
    {
        var deadline = _time.GetUtcNow() + wait;
        while (true)
        {
            Task wake;
            lock (_gate)
            {
                if (!_providers.TryGetValue(providerId, out var p) || p.Record.Epoch != epoch || p.Record.State != ProviderStates.Ready)
                {
                    throw new StoreConflictException("stale_epoch", $"epoch: {epoch} is not the provider's current epoch; register again");
                }

                // A job told to give way (preempted, outbid) is no longer handed out; one handed out may have started.
                var handed = _jobs.Values.Where(j => j.Record.State == JobStates.Leased && j.Record.ProviderId == providerId && j.Record.Epoch == epoch && j.Preempting is null)
                    .OrderBy(j => j.Record.Id).ToList();
                foreach (var j in handed)
                {
                    j.HandedOut = true;
                }

                var leased = handed
                    .Select(j => new LeasedJob(j.Record.Id, j.Record.Attempt, j.Record.Name, j.Doc.Command, j.Doc.Script, LeaseEnv(j), j.Doc.Resources.Cpu,
                        j.Doc.Resources.MemoryMiB, j.Doc.Tasks, j.Doc.TimeLimitSeconds, j.Record.GroupId!, epoch, j.Doc.Format, j.Record.TenantId)).ToList();
                var left = deadline - _time.GetUtcNow();
                if (leased.Count > 0 || left <= TimeSpan.Zero)
                {
                    return leased;
                }

                if (p.Wake.Task.IsCompleted)
                {
                    p.Wake = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                }

                wake = p.Wake.Task;
            }

            try
            {
                var left = deadline - _time.GetUtcNow();
                if (left <= TimeSpan.Zero)
                {
                    continue; // the deadline passed while the gate was released: answer with what there is
                }

                await wake.WaitAsync(left, _time, ct);
            }
            catch (TimeoutException)
            {
                // Deadline reached: loop once more and return what there is.
            }
        }
    }

    /// <summary>An agent's report of a state change of one of its jobs (fenced by the epoch).</summary>
    public async Task<JobRecord> ReportAsync(long providerId, long epoch, long jobId, string state, int? exitCode, string? message,
        long? backendElapsedSeconds = null, string? backendTres = null, long? observedMs = null, long? observedStartMs = null)
    {
        LiveJob? live;
        lock (_gate)
        {
            DrainInboxLocked();
            _jobs.TryGetValue(jobId, out live);
        }

        var now = NowMs;
        if (state == JobStates.Running)
        {
            // Metered from when the agent saw the process start, never before the lease nor after receipt.
            var started = await ObservedStartAsync(jobId, live, observedMs, now);
            var rec = await _store.ApplyAsync(new Transition(jobId, [JobStates.Leased], JobStates.Running, message ?? "started")
            {
                RequireEpoch = epoch, RequireProvider = providerId, StartedMs = started, AtMs = now,
            });
            Update(live, rec, JobStates.Leased);
            return rec;
        }

        if (state is not (JobStates.Succeeded or JobStates.Failed or Interrupted))
        {
            throw new ValidationException("state", "enum", $"state: agents report running, succeeded, failed or interrupted, not '{state}'");
        }

        var current = live?.Record ?? await _store.GetJobAsync(jobId) ?? throw new StoreConflictException("not_found", $"job {jobId} does not exist");
        var startFilledIn = current.StartedMs is null && current.State == JobStates.Leased;
        if (startFilledIn)
        {
            // The running report never got through (the control plane was down for the whole run): the agent's
            // observed start, bounded by the lease, stands in for it.
            current = current with { StartedMs = await ObservedStartAsync(jobId, live, observedStartMs, now) };
        }

        var endedMs = JobLifecycle.BoundedEnd(observedMs, current.StartedMs, now);
        Transition Fenced(Transition t) => t with { RequireEpoch = epoch, RequireProvider = providerId, AtMs = now };
        if (state == Interrupted && current.State is JobStates.Leased or JobStates.Running)
        {
            var back = await _store.ApplyAsync(Fenced(JobLifecycle.Interrupted(current, new AttemptEnd(state, exitCode, message, endedMs, UsageOf(current, live, endedMs), startFilledIn), Options.FeeBps)));
            MoneyMoved(current.TenantId);
            Finish(live, back, current.State);
            return back;
        }

        if (state == Interrupted)
        {
            state = JobStates.Failed; // a cancelled job's process: ended, as below
        }
        var usage = UsageOf(current, live, endedMs) is { } metered
            ? metered with { BackendElapsedSeconds = backendElapsedSeconds, BackendTres = backendTres }
            : null;
        if (usage?.BackendElapsedSeconds is { } be)
        {
            // Reconciliation is visible in the job's history: the provider's figure next to Suanli's.
            var ours = Math.Max(0, (usage.EndedMs - usage.StartedMs) / 1000);
            message = $"{message ?? $"exit {exitCode}"}; provider accounting: elapsed {be} s (Suanli metered {ours} s, difference {ours - be} s), TRES {backendTres}";
        }

        var end = new AttemptEnd(state, exitCode, message, endedMs, usage, startFilledIn);
        async Task<JobRecord> CancelledProcessEnded(JobRecord cancelled)
        {
            var rec = await _store.ApplyAsync(Fenced(JobLifecycle.CancelledProcessEnded(cancelled, end, Options.FeeBps)));
            MoneyMoved(cancelled.TenantId);
            await ReleaseCancelledAsync(jobId);
            return rec;
        }

        if (current.State == JobStates.Cancelled)
        {
            return await CancelledProcessEnded(current);
        }

        var t = Fenced(JobLifecycle.Ended(current, end, new AttemptContext(live is not null && live.Doc.Retry.OnFailure, live?.Preempting), Options.FeeBps, Options.SpotNotice));
        JobRecord done;
        try
        {
            done = await _store.ApplyAsync(t);
        }
        catch (StoreConflictException)
        {
            // A cancel may have won the race against this final report (our view of the job was from before it): the
            // attempt still ran and is metered and charged as a cancelled one, not dropped.
            if (await _store.GetJobAsync(jobId) is { State: JobStates.Cancelled } cancelled && cancelled.ProviderId == providerId && cancelled.Epoch == epoch)
            {
                return await CancelledProcessEnded(cancelled);
            }

            throw;
        }

        MoneyMoved(current.TenantId);
        Finish(live, done, current.State);
        return done;
    }

    /// <summary>An agent's report that it stopped an attempt itself (shutting down), not the job failing.</summary>
    public const string Interrupted = AgentStates.Interrupted;

    /// <summary>When an attempt started (<see cref="JobLifecycle.BoundedStart"/>), reading the lease's time when this process did not write it.</summary>
    private async Task<long> ObservedStartAsync(long jobId, LiveJob? live, long? observed, long now)
    {
        var leasedMs = live?.LeasedMs;
        if (leasedMs is null && observed is { } o && o < now)
        {
            // Leased before this process started: the lease's event carries its time.
            leasedMs = (await _store.EventsAsync(jobId)).LastOrDefault(e => e.State == JobStates.Leased)?.AtMs;
        }

        return JobLifecycle.BoundedStart(observed, leasedMs, now);
    }

    private UsageRecord? UsageOf(JobRecord j, LiveJob? live, long now)
    {
        if (j.ProviderId is not { } provider || live is null || j.GroupId is null)
        {
            return null;
        }

        // The allocation, or (when a pool rebuild dropped it, e.g. its offer ended) what the job asked for.
        var gpuMilli = live.Allocation?.GpuMilli ?? (long)live.Spec.Task.TotalGpuMilli * live.Spec.Tasks;
        var milliCpu = live.Allocation?.MilliCpu ?? live.Spec.Task.MilliCpu * live.Spec.Tasks;

        string? model = null;
        lock (_gate)
        {
            DrainInboxLocked();
            if (_providers.TryGetValue(provider, out var p))
            {
                model = p.Record.Groups.FirstOrDefault(g => g.Id == j.GroupId)?.Accelerator;
            }
        }

        var started = j.StartedMs ?? now;
        return new UsageRecord(j.Id, j.Attempt, j.TenantId, provider, j.GroupId, model, live.Doc.Resources.AcceleratorCount * live.Doc.Tasks,
            gpuMilli, milliCpu, live.Doc.Resources.MemoryMiB * live.Doc.Tasks, started, Math.Max(started, now));
    }

    /// <summary>Appends agent output to a job's log (only the provider holding the job, under its epoch).</summary>
    public async Task AppendLogAsync(long providerId, long epoch, long jobId, long? offset, string data)
    {
        int attempt;
        lock (_gate)
        {
            DrainInboxLocked();
            if (!_jobs.TryGetValue(jobId, out var j) || j.Record.ProviderId != providerId || j.Record.Epoch != epoch)
            {
                throw new StoreConflictException("stale_epoch", $"job {jobId} is not held by this provider under epoch {epoch}");
            }

            attempt = j.Record.Attempt;
        }

        // A NUL ends a string for SQLite's text functions (the rest of the chunk would be lost): stored as U+FFFD.
        await _store.AppendLogAsync(jobId, attempt, offset, data.Contains('\0', StringComparison.Ordinal) ? data.Replace('\0', '\uFFFD') : data, Options.LogCapBytes);
    }

    /// <summary>Moves a leased or running job of a lost provider back to the queue, or to lost when no attempt is left.</summary>
    private async Task HandleLostAsync(long jobId, string why)
    {
        LiveJob? live;
        lock (_gate)
        {
            DrainInboxLocked();
            _jobs.TryGetValue(jobId, out live);
        }

        var current = live?.Record ?? await _store.GetJobAsync(jobId);
        if (current is null || JobStates.IsTerminal(current.State) && current.State != JobStates.Cancelled)
        {
            return;
        }

        var now = NowMs;
        if (current.State == JobStates.Cancelled)
        {
            await ReleaseCancelledAsync(jobId);
            return;
        }

        if (JobLifecycle.Lost(current, why, UsageOf(current, live, now), now, Options.FeeBps) is not { } lost)
        {
            return;
        }

        try
        {
            var rec = await _store.ApplyAsync(lost);
            MoneyMoved(current.TenantId);
            Finish(live, rec, current.State);
        }
        catch (StoreConflictException e)
        {
            ServerLog.LostHandlingSkipped(_log, e, jobId);
        }
    }

    /// <summary>
    /// Marks providers whose heartbeat is older than <see cref="ControlPlaneOptions.LostAfter"/> lost (nothing more is
    /// leased to them) and hands their jobs to the lifecycle: a job no agent has yet at once; one its agent may be
    /// running only once <see cref="ControlPlaneOptions.AgentOutageGrace"/> has passed too — the time that agent keeps
    /// its jobs while it cannot reach the control plane — so a job never runs in two places.
    /// </summary>
    private async Task DetectLostAsync()
    {
        var now = NowMs;
        var lostAfter = (long)Options.LostAfter.TotalMilliseconds;
        var grace = (long)Options.AgentOutageGrace.TotalMilliseconds;
        List<LiveProvider> lost;
        lock (_gate)
        {
            DrainInboxLocked();
            lost = [.. _providers.Values.Where(p => p.Record.State == ProviderStates.Ready && now - p.LastHeartbeatMs > lostAfter)];
        }

        foreach (var p in lost)
        {
            await _store.MarkProviderLostAsync(p.Record.Id, p.Record.Epoch, now);
            int held;
            lock (_gate)
            {
                p.Record = p.Record with { State = ProviderStates.Lost };
                p.Wake.TrySetResult();
                held = _jobs.Values.Count(j => j.Record.ProviderId == p.Record.Id && j.Record.State is JobStates.Leased or JobStates.Running or JobStates.Cancelled);
                _poolDirty = true;
                _lostHolding = true;
            }

            ServerLog.ProviderLost(_log, p.Record.Name, (now - p.LastHeartbeatMs) / 1000.0, held);
        }

        if (!_lostHolding)
        {
            return;
        }

        List<(LiveJob Job, string Provider)> due;
        lock (_gate)
        {
            var waiting = false;
            due = [];
            foreach (var j in _jobs.Values)
            {
                if (j.LostHandled || j.Record.ProviderId is not { } pid || !_providers.TryGetValue(pid, out var p) || p.Record.State != ProviderStates.Lost
                    || j.Record.State is not (JobStates.Leased or JobStates.Running or JobStates.Cancelled))
                {
                    continue;
                }

                if ((j.Record.State == JobStates.Leased && !j.HandedOut) || now - p.LastHeartbeatMs > lostAfter + grace)
                {
                    j.LostHandled = true;
                    due.Add((j, p.Record.Name));
                }
                else
                {
                    waiting = true;
                }
            }

            _lostHolding = waiting;
        }

        foreach (var (j, provider) in due)
        {
            await HandleLostAsync(j.Record.Id, $"provider {provider} stopped heartbeating");
        }
    }

    // A lost provider still holds jobs its agent may be running (waiting out the agent's outage grace).
    private bool _lostHolding;
}
