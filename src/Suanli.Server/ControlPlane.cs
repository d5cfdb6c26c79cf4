using System.Text.Json;
using Microsoft.Extensions.Logging;
using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using Suanli.Core.Units;
using Suanli.Server.Scheduling;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>
/// The live control plane, the one owner of the live state (jobs, providers, the pool, offers, spot prices) under one
/// lock; the store is the source of truth and every change is written there first. This file: the state, recovery,
/// submissions, cancels and the end of attempts. The other parts, one responsibility each: Agents/ControlPlane.Agents.cs
/// (the agent gateway), Scheduling/ControlPlane.Cycle.cs (the cycle: the core decides through
/// <see cref="Scheduler.RunCycle"/> and <see cref="Admission.Admit"/>, this carries it out), Scheduling/ControlPlane.Explain.cs,
/// Market/ControlPlane.Spot.cs and Market/ControlPlane.Market.cs. The rules it applies are pure code elsewhere
/// (<see cref="JobLifecycle"/>, <see cref="Scheduling.PoolBuilder"/>, the core).
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
            live.HandedOut = j.State == JobStates.Leased; // leased before this process: its agent may have started it
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
        _lostHolding = true; // a provider lost before the restart may still hold jobs: the first tick looks
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

    /// <inheritdoc/>
    public void Dispose() => _wake.Dispose();

    // The scheduler memory recovered at start-up, handed to the first scheduler built.
    private JobSpec? _recoveredLastStarted;

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
