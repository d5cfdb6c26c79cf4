using System.Diagnostics;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Suanli.Core.Domain;
using Suanli.Core.Market;
using Suanli.Core.Scheduling;
using Suanli.Core.Units;
using Suanli.Server.Scheduling;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>
/// The live control plane: holds the queue and the pool in memory (the store is the source of truth and every change
/// is written there first), runs <see cref="Scheduler.RunCycle"/> — the same core the simulator runs — and turns its
/// decisions into durable leases for the provider agents. It also detects lost providers and meters finished work.
/// </summary>
public sealed partial class ControlPlane : IDisposable
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);
    private readonly IControlStore _store;
    private readonly ILedgerStore _ledger;
    private Dictionary<long, OfferRecord> _offers = [];
    private long _walletGeneration;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<long, long> _tenantMoney = new();
    private readonly TimeProvider _time;
    private readonly ServerMetrics _metrics;
    private readonly ILogger<ControlPlane> _log;
    private readonly Lock _gate = new();
    private readonly Dictionary<long, LiveJob> _jobs = [];
    private readonly Dictionary<long, LiveProvider> _providers = [];
    // Copy-on-write snapshot: the submit path reads it without taking the gate.
    private volatile Dictionary<long, TenantRecord> _tenants = [];

    // Submissions land here without the gate and are moved into _jobs by whoever takes the gate next.
    private readonly System.Collections.Concurrent.ConcurrentQueue<LiveJob> _inbox = new();
    private readonly FairShareLedger _fairShare = new();

    /// <summary>Metered attempts read at recovery, charged to fair-share once the pool's size is known again.</summary>
    private IReadOnlyList<UsageRecord>? _usageToReplay;

    // The task shapes of the last PriorWindow submitted tasks: the typical-task prior of the fgd and suanli placements.
    private readonly Dictionary<(long Cpu, int Milli, int Count, string Spec), int> _shapeCounts = [];
    private readonly Queue<(long Cpu, int Milli, int Count, string Spec)> _shapeWindow = new();
    private int _shapesSinceBuild;
    private (int Shapes, int Tasks) _priorInUse;

    /// <summary>How many recent tasks the fragmentation prior describes.</summary>
    private const int PriorWindow = 10_000;

    /// <summary>New tasks after which the placement is rebuilt with a fresh prior.</summary>
    private const int PriorRefresh = 500;
    private readonly RunTimePredictor _predictor = new();
    private readonly SemaphoreSlim _wake = new(0, 1);
    private Dictionary<long, WaitReason> _waits = [];
    private PoolPartition? _partition;

    private Pool? PoolNow => _partition?.Pool;
    private Scheduler? _scheduler;
    private ClusterState? _state;
    private bool _poolDirty = true;

    public ControlPlane(IControlStore store, ILedgerStore ledger, TimeProvider time, ServerMetrics metrics, ControlPlaneOptions options, ILogger<ControlPlane> log)
    {
        _store = store;
        _ledger = ledger;
        _time = time;
        _metrics = metrics;
        Options = options;
        _log = log;
    }

    public ControlPlaneOptions Options { get; }

    private static readonly TimeSpan MinCycleGap = TimeSpan.FromMilliseconds(5);
    private TimeSpan _lastCycle;

    /// <summary>The accelerator catalogue used for validation and metering.</summary>
    public AcceleratorCatalogue Catalogue { get; } = AcceleratorCatalogue.BuiltIn;

    private long NowMs => _time.GetUtcNow().ToUnixTimeMilliseconds();

    /// <summary>Loads tenants, providers and every non-terminal job from the store (recovery after a restart).</summary>
    public async Task RecoverAsync()
    {
        var now = NowMs;
        _tenants = (await _store.ListTenantsAsync()).ToDictionary(t => t.Id);
        _offers = (await _ledger.OffersAsync()).ToDictionary(o => o.Id);

        foreach (var p in await _store.ListProvidersAsync())
        {
            // A provider that was ready gets a full timeout from now to heartbeat again.
            _providers[p.Id] = new LiveProvider(p) { LastHeartbeatMs = now };
        }

        foreach (var j in await _store.ActiveJobsAsync())
        {
            var live = ToLive(j);
            if (j.Allocation is not null)
            {
                (live.PoolGroup, _, _) = PoolPartition.Decode(j.Allocation);
            }

            _jobs[j.Id] = live;
            NoteShapeLocked(live.Spec);
        }

        // The scheduler's memory survives the restart: run-time history for the predictor, decayed usage for fair-share.
        // The job started last, active or finished: the scheduler's continuation memory.
        _recoveredLastStarted = _jobs.Values.Where(j => j.Record.StartedMs is not null).MaxBy(j => (j.Record.StartedMs, j.Record.Id))?.Spec;
        long lastStartedMs = _jobs.Values.Select(j => j.Record.StartedMs ?? 0).DefaultIfEmpty(0).Max();
        foreach (var j in await _store.RecentFinishedJobsAsync(RunTimePredictor.HistoryDepth))
        {
            var spec = ToLive(j).Spec;
            if (j.StartedMs > lastStartedMs)
            {
                (_recoveredLastStarted, lastStartedMs) = (spec, j.StartedMs!.Value);
            }

            _predictor.Completed(spec, Math.Max(0, (j.EndedMs!.Value - j.StartedMs!.Value) / 1000));
            NoteShapeLocked(spec);
        }

        _usageToReplay = await _store.UsageAsync(null, now - (FairShareReplayHalfLives * _fairShare.HalfLifeSeconds * 1000), now);
        _metrics.SetStateCounts(await _store.CountJobsByStateAsync());
        _poolDirty = true;
        ServerLog.Recovered(_log, _jobs.Count, _providers.Count);
    }

    /// <summary>Moves acknowledged submissions into the job table (caller holds the gate).</summary>
    private void DrainInboxLocked()
    {
        while (_inbox.TryDequeue(out var j))
        {
            if (_jobs.TryAdd(j.Record.Id, j))
            {
                NoteShapeLocked(j.Spec);
            }
        }
    }

    private bool PlacementUsesPrior => Options.Placement is "fgd" or "suanli";

    /// <summary>Adds a job's tasks to the recent-shape window; asks for a rebuild when enough new tasks came.</summary>
    private void NoteShapeLocked(JobSpec spec)
    {
        var key = TypicalTask.KeyOf(spec.Task);
        for (var i = 0; i < Math.Min(spec.Tasks, PriorWindow); i++)
        {
            _shapeWindow.Enqueue(key);
            _shapeCounts[key] = _shapeCounts.GetValueOrDefault(key) + 1;
            if (_shapeWindow.Count > PriorWindow)
            {
                var old = _shapeWindow.Dequeue();
                _shapeCounts[old]--;
            }
        }

        // Early on the mix changes fast: rebuild whenever the window has grown by half since the last build, later every PriorRefresh tasks.
        _shapesSinceBuild += spec.Tasks;
        if (PlacementUsesPrior && _shapesSinceBuild >= Math.Min(PriorRefresh, Math.Max(1, _shapeWindow.Count / 2)))
        {
            _poolDirty = true;
        }
    }

    private LiveJob ToLive(JobRecord j)
    {
        var doc = JobDocument.FromStored(j.Spec);
        var spec = new JobSpec(j.Id, j.TenantId.ToString(System.Globalization.CultureInfo.InvariantCulture), doc.ToTask(), doc.Tasks, j.SubmittedMs / 1000,
            doc.TimeLimitSeconds, j.PriorityClass, Constraints: doc.Constraints, Budget: doc.Budget, Tier: doc.Tier,
            Dependencies: doc.Dependencies.Count == 0 ? null : [.. doc.DependencyList.Select(d => new JobDependency(JobDependency.ParseKind(d.Kind) ?? DependencyKind.AfterAny, d.Job))],
            Array: doc.ArrayLimit is { } limit ? new ArrayMembership(doc.ArrayKey(j.Id)!.Value, limit) : null);
        if (spec.After.Count > 0)
        {
            _needFates = true;
        }

        return new LiveJob(j, doc, spec);
    }

    /// <summary>Registers a tenant in the in-memory fair-share table.</summary>
    public void TenantCreated(TenantRecord t)
    {
        lock (_gate)
        {
            DrainInboxLocked();
            _tenants = new Dictionary<long, TenantRecord>(_tenants) { [t.Id] = t };
        }
    }

    /// <summary>Registers a provider created by the operator.</summary>
    public void ProviderCreated(ProviderRecord p)
    {
        lock (_gate)
        {
            DrainInboxLocked();
            _providers[p.Id] = new LiveProvider(p);
        }
    }

    // ------------------------------------------------------------------ submit / cancel

    /// <summary>Durably stores a job and queues it. Returns the record and whether it was an idempotent replay.</summary>
    public async Task<(JobRecord Job, bool Replayed)> SubmitAsync(long tenantId, JobDocument doc, string? idempotencyKey)
    {
        var (rec, replayed) = await _store.SubmitAsync(new NewJob(tenantId, doc.Name, doc.ToJson(), doc.Retry.MaxAttempts, doc.PriorityClass, NowMs, idempotencyKey));
        if (!replayed)
        {
            _inbox.Enqueue(ToLive(rec));

            _metrics.Transition(null, JobStates.Queued);
            Wake();
        }

        return (rec, replayed);
    }

    /// <summary>Cancels a job: a queued job stops at once; a leased or running job's process is stopped by its agent.</summary>
    public async Task<JobRecord> CancelAsync(long jobId, string reason = "cancelled")
    {
        var rec = await _store.ApplyAsync(new Transition(jobId, [JobStates.Queued, JobStates.Leased, JobStates.Running], JobStates.Cancelled,
            reason == "cancelled" ? "cancelled by request" : reason)
        {
            AtMs = NowMs, EndedMs = NowMs, Reason = reason,
        });
        string from;
        lock (_gate)
        {
            DrainInboxLocked();
            if (_jobs.TryGetValue(jobId, out var live))
            {
                from = live.Record.State;
                live.Record = rec;
                if (live.Allocation is null || from == JobStates.Queued)
                {
                    ReleaseLocked(live);
                    _jobs.Remove(jobId);
                }
                else if (_providers.TryGetValue(rec.ProviderId ?? -1, out var p))
                {
                    p.Wake.TrySetResult();
                }
            }
            else
            {
                from = JobStates.Queued;
            }
        }

        _metrics.Transition(from, JobStates.Cancelled);
        Wake();
        return rec;
    }

    // ------------------------------------------------------------------ agents

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

    /// <summary>Money moved (a top-up, a settlement): jobs that waited for funds are tried again.</summary>
    public void MoneyMoved(long? tenant = null)
    {
        if (tenant is { } t)
        {
            _tenantMoney.AddOrUpdate(t, 1, (_, g) => g + 1);
        }
        else
        {
            Interlocked.Increment(ref _walletGeneration);
        }
    }

    /// <summary>True while neither the tenant's wallet nor the market as a whole moved since the lease was refused.</summary>
    private bool StillUnfunded(LiveJob j, long global) =>
        j.Unfunded is { } u && u.Global == global && u.Tenant == _tenantMoney.GetValueOrDefault(j.Record.TenantId);

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

                var leased = _jobs.Values.Where(j => j.Record.State == JobStates.Leased && j.Record.ProviderId == providerId && j.Record.Epoch == epoch)
                    .OrderBy(j => j.Record.Id)
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
                await wake.WaitAsync(deadline - _time.GetUtcNow(), _time, ct);
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

    private void Update(LiveJob? live, JobRecord rec, string from)
    {
        if (live is not null)
        {
            lock (_gate)
            {
                live.Record = rec;
            }
        }

        _metrics.Transition(from, rec.State);
    }

    /// <summary>How many fair-share half-lives of metered history a restart replays (older usage has decayed below 0.1 %).</summary>
    private const int FairShareReplayHalfLives = 10;

    /// <summary>The pool's milli-CPU and milli-GPU (at least 1 each): the denominators of a job's dominant share.</summary>
    private (double Cpu, double Gpu) PoolTotalsLocked() =>
        (Math.Max(1, PoolNow?.Groups.Sum(g => (double)g.Shape.MilliCpu * g.NodeCount) ?? 1),
         Math.Max(1, PoolNow?.Groups.Sum(g => 1000.0 * g.Shape.AcceleratorCount * g.NodeCount) ?? 1));

    /// <summary>Charges the attempts metered before a restart to fair-share, oldest first, once a pool exists.</summary>
    private void ReplayUsageLocked()
    {
        if (_usageToReplay is not { } rows || PoolNow is null || PoolNow.Groups.Count == 0)
        {
            return;
        }

        var (poolCpu, poolGpu) = PoolTotalsLocked();
        foreach (var u in rows.OrderBy(u => u.EndedMs))
        {
            var share = Math.Max(u.MilliCpu / poolCpu, u.GpuMilli / poolGpu);
            _fairShare.Charge(u.TenantId.ToString(System.Globalization.CultureInfo.InvariantCulture), share * Math.Max(0, (u.EndedMs - u.StartedMs) / 1000), u.EndedMs / 1000);
        }

        _usageToReplay = null;
    }

    /// <summary>After a final or requeue transition: frees resources, charges fair share, drops or requeues the job.</summary>
    private void Finish(LiveJob? live, JobRecord rec, string from)
    {
        if (live is not null)
        {
            lock (_gate)
            {
                if (live.Allocation is not null && live.Record.StartedMs is { } s)
                {
                    var (poolCpu, poolGpu) = PoolTotalsLocked();
                    var share = FairShareLedger.DominantShare(live.Spec, poolCpu, poolGpu);
                    _fairShare.Charge(live.Spec.Tenant, share * Math.Max(0, (NowMs - s) / 1000), NowMs / 1000);
                }

                if (rec.State is JobStates.Succeeded or JobStates.Failed && rec.StartedMs is { } started && rec.EndedMs is { } ended)
                {
                    _predictor.Completed(live.Spec, Math.Max(0, (ended - started) / 1000));
                }

                ReleaseLocked(live);
                if (rec.State == JobStates.Queued)
                {
                    _jobs[rec.Id] = ToLive(rec);
                }
                else
                {
                    _jobs.Remove(rec.Id);
                }
            }
        }

        _metrics.Transition(from, rec.State);
        Wake();
    }

    private void ReleaseLocked(LiveJob j)
    {
        if (j.Allocation is not null && _state is not null && PoolNow is not null && j.PoolGroup is not null
            && PoolNow.Groups.Count > j.Allocation.Group && PoolNow.Groups[j.Allocation.Group].Id == j.PoolGroup)
        {
            _state.Release(j.Allocation);
        }

        foreach (var (part, group) in j.Parts)
        {
            if (_state is not null && PoolNow is not null && PoolNow.Groups.Count > part.Group && PoolNow.Groups[part.Group].Id == group)
            {
                _state.Release(part);
            }
        }

        j.Parts.Clear();
        j.Allocation = null;
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

    // ------------------------------------------------------------------ scheduling loop

    /// <inheritdoc/>
    public void Dispose() => _wake.Dispose();

    /// <summary>Wakes the scheduling loop.</summary>
    public void Wake()
    {
        if (_wake.CurrentCount == 0)
        {
            try
            {
                _wake.Release();
            }
            catch (Exception e) when (e is SemaphoreFullException or ObjectDisposedException)
            {
                // Already awake, or the host is shutting down.
            }
        }
    }

    /// <summary>
    /// Waits until there is work (a wake-up, or the cycle interval), then a little longer so a burst of wake-ups (many
    /// submissions) becomes one cycle; a cycle over a long queue may take a while, so at most about a quarter of the
    /// time goes to cycles.
    /// </summary>
    internal async Task WaitForWorkAsync(CancellationToken ct)
    {
        await _wake.WaitAsync(Options.CycleInterval, ct);
        await Task.Delay(MinCycleGap + (3 * _lastCycle), _time, ct);
    }

    /// <summary>One turn of the loop: lost providers, market housekeeping, the spot auction when due, a scheduling cycle.</summary>
    internal async Task TickAsync()
    {
        await DetectLostAsync();
        await HousekeepMarketAsync();
        if (NowMs >= _nextAuctionMs && HasSpotMarket())
        {
            await ClearSpotMarketAsync();
        }

        await CycleAsync();
    }

    // The scheduler memory recovered at start-up, handed to the first scheduler built.
    private JobSpec? _recoveredLastStarted;

    private async Task DetectLostAsync()
    {
        var now = NowMs;
        List<LiveProvider> lost;
        lock (_gate)
        {
            DrainInboxLocked();
            lost = [.. _providers.Values.Where(p => p.Record.State == ProviderStates.Ready && now - p.LastHeartbeatMs > Options.LostAfter.TotalMilliseconds)];
        }

        foreach (var p in lost)
        {
            await _store.MarkProviderLostAsync(p.Record.Id, p.Record.Epoch, now);
            List<long> held;
            lock (_gate)
            {
                p.Record = p.Record with { State = ProviderStates.Lost };
                p.Wake.TrySetResult();
                held = [.. _jobs.Values.Where(j => j.Record.ProviderId == p.Record.Id && j.Record.State is JobStates.Leased or JobStates.Running or JobStates.Cancelled).Select(j => j.Record.Id)];
            }

            ServerLog.ProviderLost(_log, p.Record.Name, (now - p.LastHeartbeatMs) / 1000.0, held.Count);

            foreach (var id in held)
            {
                await HandleLostAsync(id, $"provider {p.Record.Name} stopped heartbeating");
            }

            lock (_gate)
            {
                _poolDirty = true;
            }
        }
    }

    private void RebuildPoolLocked()
    {
        var now = NowMs;
        var partition = PoolBuilder.Build(_providers.Values.Select(p => p.Record), _offers.Values, now, Catalogue, Options.Latency, o => (BuyerSellerPrices(o).Buyer, SpotPrice(o)));
        _partition = partition;
        var groups = partition.Pool.Groups;
        ReplayUsageLocked();
        var typical = PlacementUsesPrior ? TypicalTask.Of(_shapeCounts) : null;
        _shapesSinceBuild = 0;
        _priorInUse = (typical?.Count ?? 0, _shapeWindow.Count);
        // The memory of the scheduler being replaced (or, after a restart, of the last run) carries over.
        var memory = _scheduler?.LastStarted ?? _recoveredLastStarted;
        _scheduler = groups.Count > 0
            ? new Scheduler(partition.Pool, PolicyRegistry.Build(Options.Policy, partition.Pool, Options.Placement, Options.Backfill, typical: typical) with { Preemption = Options.Preemption, PreemptWithinTenant = true }) { LastStarted = memory }
            : null;
        _state = new ClusterState(partition.Pool);
        foreach (var j in _jobs.Values)
        {
            j.Parts.Clear();
            j.Allocation = null;
            if (j.Record.Allocation is null || j.Record.State is not (JobStates.Leased or JobStates.Running or JobStates.Cancelled))
            {
                continue;
            }

            // The lease names the nodes by their place in the physical group; find them in today's partition.
            foreach (var (gi, part) in partition.Place(j.Record.Allocation))
            {
                var a = new Allocation(gi, part);
                _state.Allocate(a);
                if (j.Allocation is null)
                {
                    j.Allocation = a;
                    j.PoolGroup = groups[gi].Id;
                }
                else
                {
                    j.Parts.Add((a, groups[gi].Id));
                }
            }
        }

        _poolDirty = false;
    }

    private volatile bool _leasing = true;

    /// <summary>
    /// Stops handing out new leases (the platform is shutting down: a job leased now would only be orphaned by the
    /// stopping agent). Everything else — reports, logs, cancels — goes on until the host stops.
    /// </summary>
    public void StopLeasing() => _leasing = false;

    /// <summary>One scheduling cycle: the core decides, the store makes each lease durable, agents are woken.</summary>
    public async Task CycleAsync()
    {
        if (!_leasing)
        {
            return;
        }

        var t0 = Stopwatch.GetTimestamp();
        await LearnFatesAsync();

        // The pool is brought up to date before the wallets are read, so a priced pool is never scheduled unfunded.
        lock (_gate)
        {
            DrainInboxLocked();
            if (_poolDirty || NowMs >= (_partition?.NextChangeMs ?? long.MaxValue))
            {
                RebuildPoolLocked();
            }
        }

        var spendable = (_partition?.Priced ?? false) ? await _ledger.SpendableAsync(NowMs) : null;
        List<(LiveJob Job, Allocation Alloc, NodeGroup Group, long ProviderId, long Epoch, string LocalGroup, HoldPlan? Hold, string Encoded)> leases = [];
        List<(JobSpec Job, string Reason)> doomed;
        List<(LiveJob Job, string Why)> unstartedVictims = [];
        var scheduled = false;
        var fundsUnread = false;
        int pendingCount = 0, preemptedCount = 0, leasedCount = 0;
        long generationAtCycle = 0;
        Dictionary<long, long> tenantMoneyAtCycle = [];
        lock (_gate)
        {
            if (!_leasing)
            {
                return; // stopped while this cycle waited for the gate
            }

            DrainInboxLocked();
            if (_poolDirty || NowMs >= (_partition?.NextChangeMs ?? long.MaxValue))
            {
                RebuildPoolLocked();
            }

            // The pool became priced while the wallets were read (an offer published meanwhile): placing now would let
            // the core spend money it was never told about. Skip this cycle's placements and run again at once.
            fundsUnread = spendable is null && (_partition?.Priced ?? false);

            // Admission (dependencies, array throttles, spot) is the core's: the simulator runs the same rules.
            var generation = Interlocked.Read(ref _walletGeneration);
            var queued = new List<LiveJob>();
            bool gated = false, dependencies = false;
            foreach (var j in _jobs.Values)
            {
                if (j.Record.State == JobStates.Queued && j.Allocation is null && !StillUnfunded(j, generation))
                {
                    queued.Add(j);
                    dependencies |= j.Spec.After.Count > 0;
                    gated |= j.Spec.Array is not null || j.Spec.Tier == Tiers.Interruptible;
                }
            }

            // Only a queue with dependencies, arrays or spot jobs needs the admission pass (as in the simulator).
            _needFates = dependencies;
            gated |= dependencies;
            doomed = [];
            _holds = [];
            if (gated)
            {
                var admission = Admission.Admit(queued.ConvertAll(j => j.Spec), AdmissionInputLocked());
                _holds = admission.Held;
                doomed = admission.Doomed;
                queued = admission.Admitted.ConvertAll(j => _jobs[j.Id]);
            }

            _metrics.QueueDepth(queued.Count);
            if (_scheduler is null || _state is null || PoolNow is null || PoolNow.Groups.Count == 0 || fundsUnread)
            {
                queued.Clear();
            }

            // Jobs no node group of the current pool can ever run stay queued (explain names the filters) but are not
            // re-ordered every cycle; the pool changing (a provider joining) re-evaluates them.
            var pending = new List<JobSpec>(queued.Count);
            foreach (var j in queued)
            {
                if (_scheduler!.FeasibleGroups(j.Spec).Count > 0)
                {
                    pending.Add(j.Spec);
                }
            }

            if (!fundsUnread)
            {
                _waits = []; // otherwise explain keeps the last cycle's words until the next one
            }

            if (pending.Count > 0)
            {
                scheduled = true;
                var running = _jobs.Values.Where(j => j.Allocation is not null)
                    .Select(j => new RunningJob(j.Spec, (j.Record.StartedMs ?? NowMs) / 1000, j.Allocation!)).ToList();
                var tenants = _tenants.Values.ToDictionary(t => t.Id.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    t => new Tenant(t.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), [t.Sector], t.Weight));
                var funds = spendable is null ? null : FundsLocked(pending, spendable);
                var result = _scheduler!.RunCycle(new CycleInput(NowMs / 1000, pending, running, tenants, _fairShare, Predictor: _predictor, Funds: funds), _state!);
                _waits = result.Waiting;
                pendingCount = pending.Count;
                preemptedCount = result.Preempted.Count;
                var started = result.Started;
                if (result.Preempted.Count > 0)
                {
                    started = PreemptLocked(result, unstartedVictims);
                }

                foreach (var placed in started)
                {
                    var live = _jobs[placed.Job.Id];
                    var group = PoolNow!.Groups[placed.Allocation.Group];
                    var provider = _providers.Values.First(p => p.Record.Name == group.ProviderId);
                    live.Allocation = placed.Allocation;
                    live.PoolGroup = group.Id;
                    live.Unfunded = null;
                    _scheduler.Forget(placed.Job);
                    var (localGroup, offer) = _partition!.Sources[placed.Allocation.Group];
                    leases.Add((live, placed.Allocation, group, provider.Record.Id, provider.Record.Epoch, localGroup, offer is null ? null : HoldFor(live, group, offer),
                        _partition!.Encode(group.Id, placed.Allocation)));
                }

                generationAtCycle = generation;
                foreach (var l in leases)
                {
                    tenantMoneyAtCycle[l.Job.Record.TenantId] = _tenantMoney.GetValueOrDefault(l.Job.Record.TenantId);
                }
            }
        }

        foreach (var (victim, why) in unstartedVictims)
        {
            await RequeueUnstartedAsync(victim, why, NowMs);
        }

        foreach (var (job, reason) in doomed)
        {
            try
            {
                await CancelAsync(job.Id, reason);
            }
            catch (StoreConflictException)
            {
                // Cancelled or started meanwhile.
            }
        }

        if (fundsUnread)
        {
            Wake();
        }

        if (!scheduled)
        {
            _lastCycle = Stopwatch.GetElapsedTime(t0); // the loop backs off in proportion to what a cycle costs, placing or not
            return;
        }

        var now = NowMs;
        var writes = leases.Select(async l =>
        {
            try
            {
                var priced = l.Hold is { } h ? $"; {h.Tier} at {Money.Yuan(h.PriceFen)}/{h.Unit}, {Money.Yuan(h.HoldFen)} held in escrow" : "";
                var rec = await _store.ApplyAsync(new Transition(l.Job.Record.Id, [JobStates.Queued], JobStates.Leased, $"leased to {l.Group.Id} (epoch {l.Epoch}){priced}")
                {
                    Lease = (l.ProviderId, l.LocalGroup, l.Epoch, l.Encoded), AtMs = now, Hold = l.Hold,
                });
                lock (_gate)
                {
                    l.Job.Record = rec;
                    l.Job.LeasedMs = now;
                    if (_providers.TryGetValue(l.ProviderId, out var p))
                    {
                        p.Wake.TrySetResult();
                    }
                }

                _metrics.Transition(JobStates.Queued, JobStates.Leased);
                Interlocked.Increment(ref leasedCount);
                ServerLog.Leased(_log, l.Job.Record.Id, l.Group.Id, l.Group.ProviderId);
                if (l.Hold is { } held)
                {
                    _metrics.Hold(held.Tier);
                }
            }
            catch (StoreConflictException e) when (e.Code == "insufficient_funds")
            {
                ServerLog.LeaseRefused(_log, l.Job.Record.Id, e.Code, e.Message);
                // The wallet cannot cover the hold: the job stays queued and is tried again once money moves.
                _metrics.Unfunded();
                lock (_gate)
                {
                    ReleaseLocked(l.Job);
                    l.Job.Unfunded = (generationAtCycle, tenantMoneyAtCycle.GetValueOrDefault(l.Job.Record.TenantId), $"waiting for funds: {e.Message}");
                }
            }
            catch (StoreConflictException e)
            {
                ServerLog.LeaseRefused(_log, l.Job.Record.Id, e.Code, e.Message);
                // Cancelled meanwhile, or the provider's agent re-registered (new epoch) since this cycle read the pool:
                // give the resources back; the job, if still queued, is placed again on the current pool.
                lock (_gate)
                {
                    ReleaseLocked(l.Job);
                    if (e.Code == "stale_epoch")
                    {
                        _poolDirty = true;
                        Wake();
                    }
                    else if (l.Job.Record.State == JobStates.Queued)
                    {
                        // Our view said queued but the store refused: it was cancelled meanwhile.
                        _jobs.Remove(l.Job.Record.Id);
                    }
                }
            }
        });
        await Task.WhenAll(writes);
        _lastCycle = Stopwatch.GetElapsedTime(t0);
        _metrics.Cycle(_lastCycle.TotalSeconds, leases.Count);
        ServerLog.Cycle(_log, pendingCount, leasedCount, _waits.Count, preemptedCount, _holds.Count, _lastCycle.TotalMilliseconds);
    }

    /// <summary>
    /// A job told to give way before it started (leased, not running) goes straight back to the queue: nothing ran,
    /// nothing is charged, its attempt is given back. If it started or ended meanwhile, the notice path takes over.
    /// </summary>
    private async Task RequeueUnstartedAsync(LiveJob j, string why, long now)
    {
        try
        {
            var rec = await _store.ApplyAsync(new Transition(j.Record.Id, [JobStates.Leased], JobStates.Queued, $"{why} before it started; requeued")
            {
                AtMs = now, Requeue = true, GrantAttempt = true, Settle = new SettlePlan(j.Record.Attempt, Void: true, 0, "requeued before start"), FeeBps = Options.FeeBps,
            });
            MoneyMoved(j.Record.TenantId);
            Finish(j, rec, JobStates.Leased);
        }
        catch (StoreConflictException)
        {
            // It started or ended meanwhile: if running, it stops at its (immediate) deadline as any victim does.
        }
    }

    /// <summary>
    /// Carries out the core's preemptions: the victims are told to stop (the spot notice, then requeued with the attempt
    /// given back). A preempting placement, and any other placement of the cycle on a node a victim still holds, is not
    /// leased now (it counted on resources the victim holds until it stops); the job starts in a later cycle once its
    /// victims are gone. Placements elsewhere are leased as usual. Returns the placements that can be leased.
    /// </summary>
    private List<Placement> PreemptLocked(CycleResult result, List<(LiveJob Job, string Why)> unstarted)
    {
        // Nodes the victims hold until they stop: a placement of this cycle that touches one counted on their release.
        var held = new HashSet<(int Group, int Node)>();
        foreach (var victim in result.Preempted)
        {
            foreach (var slice in victim.Allocation.Slices)
            {
                held.Add((victim.Allocation.Group, slice.Node));
            }
        }

        var now = NowMs;
        var keep = new List<Placement>(result.Started.Count);
        var released = false; // placements before the first preempting one were made while the victims still held theirs
        foreach (var placed in result.Started)
        {
            released |= placed.Preempts.Count > 0;
            if (placed.Preempts.Count == 0 && (!released || !placed.Allocation.Slices.Any(sl => held.Contains((placed.Allocation.Group, sl.Node)))))
            {
                keep.Add(placed);
                continue;
            }

            _state!.Release(placed.Allocation);
            foreach (var victim in placed.Preempts)
            {
                if (_jobs.TryGetValue(victim, out var v) && v.Preempting is null && v.Record.State is JobStates.Leased or JobStates.Running)
                {
                    _metrics.Preempted();
                    var why = $"preempted by job {placed.Job.Id} of priority class {placed.Job.PriorityClass} (this job's class is {v.Spec.PriorityClass})";
                    if (v.Record.State == JobStates.Leased)
                    {
                        // Nothing ran yet: no notice to wait out, it goes straight back to the queue (as an outbid spot job).
                        unstarted.Add((v, why));
                        v.Preempting = (now, why);
                        continue;
                    }

                    v.Preempting = (now + (long)Options.SpotNotice.TotalMilliseconds, why);
                    if (_providers.TryGetValue(v.Record.ProviderId ?? -1, out var p))
                    {
                        p.Wake.TrySetResult();
                    }
                }
            }
        }

        foreach (var victim in result.Preempted)
        {
            _state!.Allocate(victim.Allocation); // it holds its resources until its agent reports it stopped
        }

        return keep;
    }

    // What admission knows of the jobs queued jobs depend on that have left the live set: a final state never changes,
    // so each is read from the store once; entries no queued job needs any more are dropped.
    private readonly Dictionary<long, JobFate> _fates = [];
    private Dictionary<long, Hold> _holds = [];
    private volatile bool _needFates = true; // a queued job has dependencies (set by each cycle and by every submission with some)

    private static JobFate FateOf(string state) => state switch
    {
        JobStates.Succeeded => JobFate.Succeeded,
        JobStates.Failed or JobStates.Cancelled or JobStates.Lost => JobFate.Unsuccessful,
        _ => JobFate.Pending,
    };

    /// <summary>Reads, once each, the final states of dependencies that are no longer live (outside the gate).</summary>
    private async Task LearnFatesAsync()
    {
        if (!_needFates)
        {
            return;
        }

        List<long> unknown;
        lock (_gate)
        {
            DrainInboxLocked();
            var needed = new HashSet<long>();
            foreach (var j in _jobs.Values)
            {
                if (j.Record.State == JobStates.Queued)
                {
                    foreach (var d in j.Spec.After)
                    {
                        needed.Add(d.JobId);
                    }
                }
            }

            foreach (var id in _fates.Keys.Where(id => !needed.Contains(id)).ToList())
            {
                _fates.Remove(id);
            }

            unknown = [.. needed.Where(id => !_jobs.ContainsKey(id) && !_fates.ContainsKey(id))];
        }

        foreach (var id in unknown)
        {
            var rec = await _store.GetJobAsync(id);
            lock (_gate)
            {
                if (rec is null || JobStates.IsTerminal(rec.State))
                {
                    _fates[id] = rec is null ? JobFate.Missing : FateOf(rec.State); // final: never changes
                }
            }
        }
    }

    private AdmissionInput AdmissionInputLocked()
    {
        var active = new Dictionary<long, int>();
        foreach (var j in _jobs.Values)
        {
            if (j.Spec.Array is { } a && j.Record.State is JobStates.Leased or JobStates.Running)
            {
                active[a.ArrayId] = active.GetValueOrDefault(a.ArrayId) + 1;
            }
        }

        // A dependency neither live nor learnt yet (it left the live set since LearnFatesAsync) waits one more cycle.
        return new AdmissionInput(
            id => _jobs.TryGetValue(id, out var d) ? FateOf(d.Record.State) : _fates.TryGetValue(id, out var f) ? f : JobFate.Pending,
            active,
            _spotWinners);
    }

    /// <summary>What each tenant with queued work can put in escrow this cycle (fen); tenants without a floor are not checked.</summary>
    private static Dictionary<string, long> FundsLocked(List<JobSpec> pending, IReadOnlyDictionary<long, long> spendable)
    {
        var funds = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var j in pending)
        {
            if (funds.ContainsKey(j.Tenant))
            {
                continue;
            }

            var have = spendable.GetValueOrDefault(long.Parse(j.Tenant, System.Globalization.CultureInfo.InvariantCulture));
            if (have != long.MaxValue)
            {
                funds[j.Tenant] = have;
            }
        }

        return funds;
    }

    /// <summary>Why a job waits (or where it could run), in words.</summary>
    public IReadOnlyList<string> Explain(JobRecord job)
    {
        lock (_gate)
        {
            DrainInboxLocked();
            if (JobStates.IsTerminal(job.State))
            {
                return [$"job is {job.State}" + (job.Reason is null ? "" : $": {job.Reason}")];
            }

            if (job.State is JobStates.Leased or JobStates.Running)
            {
                return [$"job is {job.State} on provider {job.ProviderId} group {job.GroupId} (epoch {job.Epoch})"];
            }

            if (_scheduler is null || _state is null || !_jobs.TryGetValue(job.Id, out var live))
            {
                return ["no provider with capacity has registered yet"];
            }

            if (_holds.TryGetValue(job.Id, out var hold))
            {
                return [hold.Kind switch
                {
                    WaitKind.Dependencies => $"waiting for dependencies: {hold.Detail}",
                    WaitKind.SpotNotAdmitted => SpotWhy(live),
                    _ => $"waiting: {hold.Detail}",
                }];
            }

            if (live.Unfunded is { } funds)
            {
                return [funds.Why];
            }

            WaitReason? reason = _waits.TryGetValue(job.Id, out var w) ? w : null;
            var lines = _scheduler.Explain(live.Spec, _state, reason);
            if (PlacementUsesPrior)
            {
                lines = [.. lines, $"placement {Options.Placement}: fragmentation prior of {_priorInUse.Shapes} task shapes from the last {_priorInUse.Tasks} submitted tasks"];
            }

            if (_scheduler.Policy.Order is FairShareOrder)
            {
                var usage = _fairShare.Usage(live.Spec.Tenant, NowMs / 1000);
                var weight = _tenants.TryGetValue(live.Record.TenantId, out var t) ? t.Weight : 1;
                return [.. lines, FormattableString.Invariant($"queue order fair-share: tenant usage {usage:F1} dominant-share seconds (decayed, half-life {_fairShare.HalfLifeSeconds / 3600} h), weight {weight}; less usage per weight goes first")];
            }

            if (_scheduler.Policy.Order is not SuanliOrder)
            {
                return lines;
            }

            // The suanli order ranks by predicted run time: say what the prediction is and what it rests on.
            var predicted = (long)Math.Round(_predictor.Predict(live.Spec));
            var known = _predictor.Known(live.Spec.Tenant);
            var basis = known == 0 ? "the time limit: this tenant has no finished job yet"
                : known == 1 ? "this tenant's last finished job"
                : $"the mean of this tenant's last {known} finished jobs";
            return [.. lines, $"queue order suanli: predicted run time {predicted} s ({basis}; never above the time limit {live.Spec.RequestedSeconds} s)"];
        }
    }

    /// <summary>The escrow a lease on an offer's capacity holds: the job's units on that node shape × price × its time limit.</summary>
    /// <remarks>The amount is the core's <see cref="Escrow.HoldFen"/> on the pool group's terms: the rule the scheduler's funds check used.</remarks>
    private HoldPlan HoldFor(LiveJob job, NodeGroup group, OfferRecord offer)
    {
        var terms = group.Terms ?? throw new InvalidOperationException($"pool group {group.Id} sells offer {offer.Id} without terms");
        var (_, seller) = BuyerSellerPrices(offer);
        var domestic = group.Shape.AcceleratorModel is { } m && Catalogue.Find(m)?.Domestic == true;
        return new HoldPlan(offer.Id, offer.Tier, offer.Unit, terms.PriceFen ?? 0, seller, Escrow.UnitsMilli(job.Spec, group, terms), Escrow.HoldFen(job.Spec, group), domestic);
    }

    /// <summary>What a job pays and the provider earns per unit-hour of an offer: spot pays the clearing prices; a reserved contract was paid up front (take-or-pay), so its use is metered at 0.</summary>
    private (long Buyer, long Seller) BuyerSellerPrices(OfferRecord offer) => offer.Tier switch
    {
        Tiers.Interruptible => SpotPrices(offer),
        Tiers.Reserved when offer.ContractFen is not null => (0, 0),
        _ => (offer.PriceFen, offer.PriceFen),
    };

    private long _nextHousekeepingMs;

    /// <summary>About once a second: expired vouchers give back what they hold, ended reserved contracts are settled.</summary>
    private async Task HousekeepMarketAsync()
    {
        var now = NowMs;
        if (now < _nextHousekeepingMs)
        {
            return;
        }

        _nextHousekeepingMs = now + 1000;
        var expired = await _ledger.ExpireVouchersAsync(now);
        var settled = await _ledger.SettleContractsAsync(now, Options.FeeBps);
        if (expired + settled > 0)
        {
            MoneyMoved();
        }

        if (settled > 0)
        {
            // A settled contract changes what the pool shows for its offer; an expired voucher does not.
            OffersChanged(await _ledger.OffersAsync());
        }

        if (Options.LogRetention is { } keep && now >= _nextLogPurgeMs)
        {
            _nextLogPurgeMs = now + 60_000;
            var purged = await _store.PurgeLogsAsync(now - (long)keep.TotalMilliseconds);
            if (purged > 0)
            {
                ServerLog.OutputPurged(_log, purged, keep.TotalDays);
            }
        }
    }

    private long _nextLogPurgeMs;

    /// <summary>
    /// What a job would cost on each node group that may run it now (every filter: hardware, placement constraints,
    /// latency, tier, budget), cheapest first: the price it would lease at, its units per hour on that node shape, the
    /// escrow hold for its time limit, and whether it fits into free capacity at this moment.
    /// </summary>
    public IReadOnlyList<QuoteRow> Quote(JobDocument doc, long tenantId)
    {
        lock (_gate)
        {
            DrainInboxLocked();
            if (_poolDirty || NowMs >= (_partition?.NextChangeMs ?? long.MaxValue))
            {
                RebuildPoolLocked();
            }

            if (_scheduler is null || PoolNow is null || _state is null)
            {
                return [];
            }

            var spec = new JobSpec(-1, tenantId.ToString(System.Globalization.CultureInfo.InvariantCulture), doc.ToTask(), doc.Tasks, NowMs / 1000, doc.TimeLimitSeconds,
                doc.PriorityClass, Constraints: doc.Constraints, Budget: doc.Budget, Tier: doc.Tier);
            var live = new LiveJob(new JobRecord(-1, tenantId, doc.Name, "", JobStates.Queued, 1, 1, doc.PriorityClass, NowMs, null, null, null, null, null, null, null, null), doc, spec);
            var rows = new List<QuoteRow>();
            foreach (var g in _scheduler.FeasibleGroups(spec))
            {
                var group = PoolNow.Groups[g];
                var (localGroup, offer) = _partition!.Sources[g];
                var hold = offer is null ? null : HoldFor(live, group, offer);
                var fitsNow = FitsNowLocked(spec, g, group);
                rows.Add(new QuoteRow(group.ProviderId, localGroup, offer?.Id, offer?.Tier ?? "unpriced", offer?.Unit, hold?.PriceFen ?? 0, hold?.UnitsMilli ?? 0,
                    hold is null ? 0 : Charging.Cost(hold.PriceFen, hold.UnitsMilli, 3_600_000), hold?.HoldFen ?? 0, fitsNow));
            }

            _scheduler.Forget(spec);
            return [.. rows.OrderBy(r => r.EstimatedFen).ThenBy(r => r.Provider, StringComparer.Ordinal).ThenBy(r => r.Group, StringComparer.Ordinal)];
        }
    }

    /// <summary>Whether every task finds free CPU, memory and whole free cards on the group's nodes right now.</summary>
    private bool FitsNowLocked(JobSpec spec, int g, NodeGroup group)
    {
        var t = spec.Task;
        long fit = 0;
        for (var n = 0; n < group.NodeCount && fit < spec.Tasks; n++)
        {
            var v = _state!.Node(g, n);
            var byCpu = t.MilliCpu > 0 ? v.FreeMilliCpu / t.MilliCpu : long.MaxValue;
            var byMem = t.MemoryMiB > 0 ? v.FreeMemoryMiB / t.MemoryMiB : long.MaxValue;
            var freeCards = 0;
            foreach (var milli in v.FreeGpu)
            {
                freeCards += milli >= Math.Max(1, t.GpuMilli) ? 1 : 0;
            }

            var byGpu = t.GpuCount > 0 ? freeCards / t.GpuCount : long.MaxValue;
            fit += Math.Min(byCpu, Math.Min(byMem, byGpu));
        }

        return fit >= spec.Tasks;
    }

    /// <summary>An offer was created or withdrawn: placement uses the live set from the next cycle.</summary>
    public void OffersChanged(IEnumerable<OfferRecord> offers)
    {
        lock (_gate)
        {
            _offers = offers.ToDictionary(o => o.Id);
            _poolDirty = true;
        }

        Wake();
    }

    /// <summary>Converts usage rows into standard units.</summary>
    public StandardQuantity Standard(UsageRecord u) =>
        StandardUnits.Convert(new ResourceUsage(Math.Max(0, (u.EndedMs - u.StartedMs) / 1000), u.MilliCpu, u.GpuMilli, u.Model), Catalogue);

    /// <summary>Provider names by id (for usage grouping).</summary>
    public IReadOnlyDictionary<long, string> ProviderNames()
    {
        lock (_gate)
        {
            DrainInboxLocked();
            return _providers.ToDictionary(p => p.Key, p => p.Value.Record.Name);
        }
    }

    /// <summary>Tenants by id (a snapshot).</summary>
    public IReadOnlyDictionary<long, TenantRecord> Tenants()
    {
        return _tenants;
    }

    /// <summary>Leased and running jobs per provider (for the provider list).</summary>
    /// <summary>How each registered agent isolates its jobs, by provider id.</summary>
    public IReadOnlyDictionary<long, string?> IsolationByProvider()
    {
        lock (_gate)
        {
            return _providers.ToDictionary(p => p.Key, p => p.Value.Isolation);
        }
    }

    public IReadOnlyDictionary<long, int> ActiveByProvider()
    {
        lock (_gate)
        {
            DrainInboxLocked();
            return _jobs.Values.Where(j => j.Record.ProviderId is not null && j.Record.State is JobStates.Leased or JobStates.Running)
                .GroupBy(j => j.Record.ProviderId!.Value).ToDictionary(g => g.Key, g => g.Count());
        }
    }
}
