using System.Buffers;
using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>A job that holds resources, as the scheduler sees it: when it started and what it holds.</summary>
public sealed record RunningJob(JobSpec Job, long StartTime, Allocation Allocation)
{
    /// <summary>
    /// When the scheduler expects the resources back: start + requested time, or one second from now for a job that
    /// has outrun its request (its real end is unknown).
    /// </summary>
    public long ExpectedEnd(long now) => Math.Max(StartTime + Job.RequestedSeconds, now + 1);
}

/// <summary>A future hold of resources for a blocked job, from <see cref="Start"/> to <see cref="End"/>.</summary>
public sealed record Reservation(long JobId, long Start, long End, Allocation Allocation);

/// <summary>Why a job did not start in a cycle.</summary>
public enum WaitKind
{
    /// <summary>Not enough free resources now; it holds a reservation at <see cref="WaitReason.At"/>.</summary>
    Reserved,

    /// <summary>Strict order: it waits behind job <see cref="WaitReason.BlockingJob"/>.</summary>
    BehindBlockedJob,

    /// <summary>
    /// It does not fit in what is left once the reservations overlapping its run (the first: job
    /// <see cref="WaitReason.BlockingJob"/>) are held back; starting it could delay that job.
    /// </summary>
    WouldDelayReservation,

    /// <summary>Not enough free resources now; the reservation depth is used up.</summary>
    NoCapacityNow,

    /// <summary>Its tenant's quota is used up.</summary>
    QuotaExceeded,

    /// <summary>No node group can ever run it (every filter reason is in the explanation).</summary>
    Infeasible,

    /// <summary>
    /// Its tenant's funds cannot cover the escrow hold on any group that could run it: <see cref="WaitReason.At"/> is
    /// the smallest hold needed (fen), <see cref="WaitReason.BlockingJob"/> what the tenant has left this cycle (fen).
    /// </summary>
    InsufficientFunds,

    /// <summary>Admission: a job it depends on has not ended yet.</summary>
    Dependencies,

    /// <summary>Admission: its array already runs as many elements as its throttle allows.</summary>
    ArrayLimit,

    /// <summary>Admission: it buys the interruptible tier and the last spot auction round did not admit it.</summary>
    SpotNotAdmitted,
}

/// <summary>A compact wait reason; <see cref="Scheduler.Explain"/> turns it into words.</summary>
public readonly record struct WaitReason(WaitKind Kind, long BlockingJob = 0, long At = 0);

/// <summary>A placement decision with the best candidate groups and their scores (for explain).</summary>
public sealed record Placement(JobSpec Job, Allocation Allocation, IReadOnlyList<(int Group, double Score)> Candidates)
{
    /// <summary>Ids of the running jobs this placement preempted to make room (empty when it fit without).</summary>
    public IReadOnlyList<long> Preempts { get; init; } = [];
}

/// <summary>The outcome of one scheduling cycle.</summary>
public sealed class CycleResult
{
    /// <summary>Creates an empty result sized for <paramref name="pending"/> queued jobs.</summary>
    public CycleResult(int pending = 0) => Waiting = new Dictionary<long, WaitReason>(pending);

    /// <summary>How many jobs did not start this cycle (whether or not their reasons were recorded).</summary>
    public int WaitingCount { get; private set; }

    internal void CountWaiting(int jobs) => WaitingCount += jobs;

    internal void Wait(long job, WaitReason reason, bool record)
    {
        WaitingCount++;
        if (record)
        {
            Waiting[job] = reason;
        }
    }

    /// <summary>Jobs started this cycle, in decision order. Their allocations are already applied to the state.</summary>
    public List<Placement> Started { get; } = [];

    /// <summary>Running jobs preempted to make room (their allocations are already released).</summary>
    public List<RunningJob> Preempted { get; } = [];

    /// <summary>Why each job that did not start is waiting.</summary>
    public Dictionary<long, WaitReason> Waiting { get; }

    /// <summary>Reservations made this cycle (they are recomputed every cycle).</summary>
    public List<Reservation> Reservations { get; } = [];
}

/// <summary>
/// Everything a cycle reads. <see cref="Pending"/> need not be ordered; the policy orders it. With
/// <see cref="RecordWaits"/> false the cycle decides the same but leaves <see cref="CycleResult.Waiting"/> empty and only
/// counts the waiting jobs (the simulator, which never explains, saves a dictionary per cycle). <see cref="Funds"/> is
/// what each tenant can still put in escrow (fen; a tenant not listed is not checked): a job is placed only on a group
/// whose hold (<see cref="Market.Escrow.HoldFen"/>) its tenant can cover after the holds of the jobs started before it
/// in the cycle; one that can afford no group waits as <see cref="WaitKind.InsufficientFunds"/> and reserves nothing.
/// </summary>
public sealed record CycleInput(
    long Now,
    IReadOnlyCollection<JobSpec> Pending,
    IReadOnlyList<RunningJob> Running,
    IReadOnlyDictionary<string, Tenant>? Tenants = null,
    FairShareLedger? FairShare = null,
    bool RecordWaits = true,
    RunTimePredictor? Predictor = null,
    IReadOnlyDictionary<string, long>? Funds = null);

/// <summary>
/// The scheduling core: one pure entry point, <see cref="RunCycle"/>, used by the live control plane and the simulator
/// alike. No I/O, no clock (the time is an input), no randomness except what a plugin was seeded with: the same input
/// gives the same decisions. The <see cref="ClusterState"/> is updated in place with the jobs it starts and preempts.
/// </summary>
public sealed class Scheduler
{
    // Caches keyed by job id; the stored spec reference guards against a different job reusing an id.
    private readonly Dictionary<long, (JobSpec Job, int[] Groups)> _feasible = [];
    private readonly QueueCache _queue = new();

    // The job this scheduler started last (any cycle): the suanli order lets its identical siblings follow it.
    private JobSpec? _lastStarted;
    private readonly List<int> _candidates = [];
    private readonly List<(int Group, double Score)> _scored = [];
    private readonly List<Reservation> _overlaid = [];
    private ReserveMemo? _memo;
    private readonly double _poolCpu;
    private readonly double _poolGpu;

    /// <summary>Creates a scheduler for <paramref name="pool"/> under <paramref name="policy"/>.</summary>
    public Scheduler(Pool pool, Policy policy)
    {
        Pool = pool;
        Policy = policy;
        _poolCpu = pool.Groups.Sum(g => (double)g.Shape.MilliCpu * g.NodeCount);
        _poolGpu = pool.Groups.Sum(g => 1000.0 * g.Shape.AcceleratorCount * g.NodeCount);
    }

    /// <summary>The pool.</summary>
    public Pool Pool { get; }

    /// <summary>
    /// The scheduler's memory across cycles: the job it started last (the suanli order lets that job's identical
    /// siblings follow it). A scheduler rebuilt for a changed pool, or after a restart, takes it over so its decisions
    /// stay the ones a single scheduler (and the simulator) would make.
    /// </summary>
    public JobSpec? LastStarted
    {
        get => _lastStarted;
        init => _lastStarted = value;
    }

    /// <summary>The policy.</summary>
    public Policy Policy { get; }

    /// <summary>Forgets cached filter results of a job that left the queue. Idempotent.</summary>
    public void Forget(JobSpec job)
    {
        if (_feasible.TryGetValue(job.Id, out var f) && ReferenceEquals(f.Job, job))
        {
            _feasible.Remove(job.Id);
        }
    }

    /// <summary>Groups whose filters all pass for <paramref name="job"/> (cached per job instance).</summary>
    public IReadOnlyList<int> FeasibleGroups(JobSpec job)
    {
        if (_feasible.TryGetValue(job.Id, out var cached) && ReferenceEquals(cached.Job, job))
        {
            return cached.Groups;
        }

        var list = new List<int>();
        for (var g = 0; g < Pool.Groups.Count; g++)
        {
            if (AdmittedByAll(job, g))
            {
                list.Add(g);
            }
        }

        int[] groups = [.. list];
        _feasible[job.Id] = (job, groups);
        return groups;
    }

    private bool AdmittedByAll(JobSpec job, int group)
    {
        foreach (var f in Policy.Filters)
        {
            if (!f.Admits(job, group, Pool))
            {
                return false;
            }
        }

        return true;
    }

    private Rejection? FirstRejection(JobSpec job, int group)
    {
        foreach (var f in Policy.Filters)
        {
            if (f.Filter(job, group, Pool) is { } r)
            {
                return r;
            }
        }

        return null;
    }

    /// <summary>Orders the queue: priority class (higher first), policy key, submit time, id.</summary>
    public List<JobSpec> Order(IReadOnlyCollection<JobSpec> pending, in QueueContext context) =>
        OrderKeyed(pending, context).ConvertAll(static k => k.Job);

    /// <summary>The ordered queue with keys; for static orders the list is the cache's own (valid until the next call).</summary>
    private List<(JobSpec Job, double Key)> OrderKeyed(IReadOnlyCollection<JobSpec> pending, in QueueContext context)
    {
        if (!Policy.Order.IsDynamic)
        {
            return _queue.Order(pending, Policy.Order, context);
        }

        var keyed = new List<(JobSpec Job, double Key)>(pending.Count);
        foreach (var j in pending)
        {
            keyed.Add((j, Policy.Order.Key(j, context)));
        }

        keyed.Sort(static (a, b) => QueueOrdering.Compare(a.Job, a.Key, b.Job, b.Key));
        return keyed;
    }

    /// <summary>Decayed usage per unit of weight for every tenant with queued or running work (the fair-share key).</summary>
    public Dictionary<string, double> TenantShares(CycleInput input)
    {
        var shares = new Dictionary<string, double>(StringComparer.Ordinal);
        if (!Policy.Order.IsDynamic)
        {
            return shares;
        }

        foreach (var r in input.Running)
        {
            var used = FairShareLedger.DominantShare(r.Job, _poolCpu, _poolGpu) * Math.Max(0, input.Now - r.StartTime);
            shares[r.Job.Tenant] = shares.GetValueOrDefault(r.Job.Tenant) + used;
        }

        foreach (var j in input.Pending)
        {
            shares.TryAdd(j.Tenant, 0);
        }

        foreach (var t in shares.Keys.ToList())
        {
            var weight = input.Tenants?.GetValueOrDefault(t)?.Weight ?? 1.0;
            shares[t] = (shares[t] + (input.FairShare?.Usage(t, input.Now) ?? 0)) / Math.Max(1e-9, weight);
        }

        return shares;
    }

    /// <summary>
    /// Runs one scheduling cycle: orders the queue, starts every job that fits (respecting reservations), reserves
    /// for blocked jobs as the backfill mode says, and preempts lower priority classes when the policy allows.
    /// </summary>
    public CycleResult RunCycle(CycleInput input, ClusterState state)
    {
        var result = new CycleResult(input.RecordWaits ? input.Pending.Count : 0);
        var record = input.RecordWaits;
        var now = input.Now;
        var ordered = OrderKeyed(input.Pending, new QueueContext(now, TenantShares(input), input.Predictor, _lastStarted));
        var running = new List<RunningJob>(input.Running);
        var quotaUse = Policy.EnforceQuotas && input.Tenants is { Count: > 0 } ? QuotaUse(input.Running) : null;
        var funds = input.Funds is { Count: > 0 } f ? new Dictionary<string, long>(f, StringComparer.Ordinal) : null;
        JobSpec? blocked = null;

        for (var i = 0; i < ordered.Count; i++)
        {
            var job = ordered[i].Job;
            if (blocked is not null && Policy.Backfill == BackfillMode.None)
            {
                if (!record)
                {
                    // Strict order: everything behind the blocked job waits; only the count is wanted.
                    result.CountWaiting(ordered.Count - i);
                    break;
                }

                result.Wait(job.Id, new(WaitKind.BehindBlockedJob, blocked.Id), record);
                continue;
            }

            var groups = FeasibleGroups(job);
            if (groups.Count == 0)
            {
                result.Wait(job.Id, new(WaitKind.Infeasible), record);
                continue;
            }

            if (quotaUse is not null && !WithinQuota(job, input.Tenants!, quotaUse))
            {
                result.Wait(job.Id, new(WaitKind.QuotaExceeded), record);
                continue;
            }

            var left = 0L;
            var gated = funds is not null && funds.TryGetValue(job.Tenant, out left);
            if (gated && Affordable(job, groups, left) is { } affordable)
            {
                if (affordable.Count == 0)
                {
                    result.Wait(job.Id, new(WaitKind.InsufficientFunds, BlockingJob: left, At: CheapestHold(job, groups)), record);
                    continue;
                }

                groups = affordable;
            }

            // Overlays only take resources away: a job that does not fit the un-overlaid free resources of any group
            // cannot fit with them either, so it skips the overlay work (which may toggle a large reservation).
            var fitsBase = BaseFits(job, groups, state);
            var placed = fitsBase ? TryPlace(job, groups, state, result.Reservations, now, now + job.RequestedSeconds) : null;
            if (placed is null && Policy.Preemption)
            {
                ClearOverlay(state);
                placed = TryPreempt(job, groups, state, running, result);
            }

            if (placed is not null)
            {
                result.Started.Add(placed);
                if (gated)
                {
                    funds![job.Tenant] = left - Market.Escrow.HoldFen(job, Pool.Groups[placed.Allocation.Group]);
                }

                _lastStarted = job;
                running.Add(new RunningJob(job, now, placed.Allocation));
                if (quotaUse is not null)
                {
                    AddQuota(quotaUse, job, +1);
                }

                continue;
            }

            if (Policy.Backfill == BackfillMode.None)
            {
                blocked = job;
                result.Wait(job.Id, new(WaitKind.NoCapacityNow), record);
                continue;
            }

            if (result.Reservations.Count < Policy.ReservationDepth)
            {
                ClearOverlay(state);
                var reservation = ReserveMemoized(job, groups, state, running, result.Reservations, now);
                result.Reservations.Add(reservation);
                result.Wait(job.Id, new(WaitKind.Reserved, At: reservation.Start), record);
            }
            else
            {
                // Tested with the reservations overlapping its run held back: name the first of them, if any.
                result.Wait(job.Id, fitsBase && _overlaid.Count > 0 ? new(WaitKind.WouldDelayReservation, _overlaid[0].JobId) : new(WaitKind.NoCapacityNow), record);
            }
        }

        ClearOverlay(state);
        return result;
    }

    /// <summary>The groups whose hold the tenant can cover; null when every group can be afforded (no copy needed).</summary>
    private List<int>? Affordable(JobSpec job, IReadOnlyList<int> groups, long left)
    {
        List<int>? affordable = null;
        for (var i = 0; i < groups.Count; i++)
        {
            var ok = Market.Escrow.HoldFen(job, Pool.Groups[groups[i]]) <= left;
            if (!ok && affordable is null)
            {
                affordable = new List<int>(groups.Count);
                for (var k = 0; k < i; k++)
                {
                    affordable.Add(groups[k]);
                }
            }
            else if (ok && affordable is not null)
            {
                affordable.Add(groups[i]);
            }
        }

        return affordable;
    }

    private long CheapestHold(JobSpec job, IReadOnlyList<int> groups)
    {
        var min = long.MaxValue;
        foreach (var g in groups)
        {
            min = Math.Min(min, Market.Escrow.HoldFen(job, Pool.Groups[g]));
        }

        return min;
    }

    private Dictionary<string, (long Cpu, long Gpu)> QuotaUse(IEnumerable<RunningJob> running)
    {
        var use = new Dictionary<string, (long, long)>(StringComparer.Ordinal);
        foreach (var r in running)
        {
            AddQuota(use, r.Job, +1);
        }

        return use;
    }

    private static void AddQuota(Dictionary<string, (long Cpu, long Gpu)> use, JobSpec job, int sign)
    {
        var u = use.GetValueOrDefault(job.Tenant);
        use[job.Tenant] = (u.Cpu + (sign * job.Task.MilliCpu * job.Tasks), u.Gpu + (sign * job.Task.TotalGpuMilliOrWhole() * job.Tasks));
    }

    private static bool WithinQuota(JobSpec job, IReadOnlyDictionary<string, Tenant> tenants, Dictionary<string, (long Cpu, long Gpu)> use)
    {
        if (!tenants.TryGetValue(job.Tenant, out var t))
        {
            return true;
        }

        var u = use.GetValueOrDefault(job.Tenant);
        return (t.QuotaMilliCpu is not { } qc || u.Cpu + (job.Task.MilliCpu * job.Tasks) <= qc)
            && (t.QuotaGpuMilli is not { } qg || u.Gpu + (job.Task.TotalGpuMilliOrWhole() * job.Tasks) <= qg);
    }

    /// <summary>
    /// Places the job now if it fits with every reservation overlapping [from, to) held; applies the allocation.
    /// Reservations are overlaid lazily: consecutive jobs that need the same overlay do not re-apply it.
    /// </summary>
    private Placement? TryPlace(JobSpec job, IReadOnlyList<int> groups, ClusterState state, List<Reservation> reservations, long from, long to)
    {
        SetOverlay(state, reservations, from, to);
        var (alloc, candidates) = PlaceBest(job, groups, state);
        return alloc is null ? null : new Placement(job, alloc, candidates);
    }

    /// <summary>Makes the overlaid reservations exactly those overlapping [from, to).</summary>
    private void SetOverlay(ClusterState state, List<Reservation> reservations, long from, long to)
    {
        for (var i = _overlaid.Count - 1; i >= 0; i--)
        {
            var r = _overlaid[i];
            if (!(r.Start < to && r.End > from))
            {
                state.Apply(r.Allocation, +1);
                _overlaid.RemoveAt(i);
            }
        }

        foreach (var r in reservations)
        {
            if (r.Start < to && r.End > from && !_overlaid.Contains(r))
            {
                state.Apply(r.Allocation, -1);
                _overlaid.Add(r);
            }
        }
    }

    private void ClearOverlay(ClusterState state)
    {
        foreach (var r in _overlaid)
        {
            state.Apply(r.Allocation, +1);
        }

        _overlaid.Clear();
    }

    private static bool Overlay(ClusterState state, List<Reservation> reservations, long from, long to, int sign)
    {
        var any = false;
        foreach (var r in reservations)
        {
            if (r.Start < to && r.End > from)
            {
                state.Apply(r.Allocation, sign);
                any = true;
            }
        }

        return any;
    }

    /// <summary>Scores the candidate groups that have room and places the job in the best one that takes it.</summary>
    private (Allocation? Allocation, IReadOnlyList<(int, double)> Candidates) PlaceBest(JobSpec job, IReadOnlyList<int> groups, ClusterState state)
    {
        _candidates.Clear();
        foreach (var g in groups)
        {
            if (AggregateFits(job, state.Group(g)))
            {
                _candidates.Add(g);
            }
        }

        if (_candidates.Count == 0)
        {
            return (null, []);
        }

        _scored.Clear();
        if (_candidates.Count == 1)
        {
            _scored.Add((_candidates[0], 100));
        }
        else
        {
            ScoreCandidates(job, state);
        }

        foreach (var (g, _) in _scored)
        {
            var alloc = PlaceInGroup(job, g, state, Policy.NodeScorer);
            if (alloc is not null)
            {
                state.Allocate(alloc);
                return (alloc, _scored.Count <= 3 ? [.. _scored] : _scored.GetRange(0, 3));
            }
        }

        return (null, []);
    }

    private void ScoreCandidates(JobSpec job, ClusterState state)
    {
        Span<double> total = _candidates.Count <= 256 ? stackalloc double[_candidates.Count] : new double[_candidates.Count];
        Span<double> raw = _candidates.Count <= 256 ? stackalloc double[_candidates.Count] : new double[_candidates.Count];
        foreach (var ws in Policy.Scorers)
        {
            double min = double.MaxValue, max = double.MinValue;
            for (var i = 0; i < _candidates.Count; i++)
            {
                raw[i] = ws.Scorer.Raw(job, _candidates[i], state);
                min = Math.Min(min, raw[i]);
                max = Math.Max(max, raw[i]);
            }

            var span = max - min;
            for (var i = 0; i < _candidates.Count; i++)
            {
                var norm = span <= 0 ? 100 : 100 * (raw[i] - min) / span;
                total[i] += ws.Weight * (ws.Scorer.HigherIsBetter ? norm : 100 - norm);
            }
        }

        for (var i = 0; i < _candidates.Count; i++)
        {
            _scored.Add((_candidates[i], total[i]));
        }

        _scored.Sort(static (a, b) => b.Score != a.Score ? b.Score.CompareTo(a.Score) : a.Group.CompareTo(b.Group));
    }

    private static bool BaseFits(JobSpec job, IReadOnlyList<int> groups, ClusterState state)
    {
        long cpu = job.Task.MilliCpu * job.Tasks, mem = job.Task.MemoryMiB * job.Tasks, gpu = job.Task.TotalGpuMilliOrWhole() * job.Tasks;
        foreach (var g in groups)
        {
            var gs = state.Group(g);
            if (cpu <= gs.BaseFreeCpu && mem <= gs.BaseFreeMem && gpu <= gs.BaseFreeGpu)
            {
                return true;
            }
        }

        return false;
    }

    private static bool AggregateFits(JobSpec job, ClusterState.GroupState g) =>
        job.Task.MilliCpu * job.Tasks <= g.SumFreeCpu
        && job.Task.MemoryMiB * job.Tasks <= g.SumFreeMem
        && job.Task.TotalGpuMilliOrWhole() * job.Tasks <= g.SumFreeGpu;

    /// <summary>
    /// Places every task of the gang in one group, or nothing (all-or-nothing). Nodes are ranked by the node scorer
    /// (ties by index); a packing scorer fills each node before the next, a spreading one puts one task per node per
    /// round. The returned allocation is not applied.
    /// </summary>
    public static Allocation? PlaceInGroup(JobSpec job, int group, ClusterState state, NodeScorer scorer)
    {
        var g = state.Group(group);
        var t = job.Task;
        if (job.Tasks == 1)
        {
            return PlaceSingle(t, group, g.Nodes, state, scorer);
        }

        var capacity = ArrayPool<int>.Shared.Rent(g.Nodes);
        var fittingBuffer = ArrayPool<(int Node, double Score)>.Shared.Rent(g.Nodes);
        try
        {
            return PlaceGang(job, group, state, scorer, capacity, fittingBuffer);
        }
        finally
        {
            ArrayPool<int>.Shared.Return(capacity);
            ArrayPool<(int Node, double Score)>.Shared.Return(fittingBuffer);
        }
    }

    private static Allocation? PlaceGang(JobSpec job, int group, ClusterState state, NodeScorer scorer, int[] capacity, (int Node, double Score)[] fittingBuffer)
    {
        var g = state.Group(group);
        var t = job.Task;
        var count = 0;
        long total = 0;
        for (var n = 0; n < g.Nodes; n++)
        {
            var view = state.Node(group, n);
            var c = NodeFit.Capacity(view, t, job.Tasks);
            capacity[n] = c;
            if (c > 0)
            {
                total += c;
                fittingBuffer[count++] = (n, scorer.Score(view, t));
            }
        }

        if (total < job.Tasks)
        {
            return null;
        }

        var fitting = fittingBuffer.AsSpan(0, count);
        fitting.Sort(static (a, b) => b.Score != a.Score ? b.Score.CompareTo(a.Score) : a.Node.CompareTo(b.Node));
        var slices = new Slice[job.Tasks];
        var placed = 0;
        try
        {
            while (placed < job.Tasks)
            {
                var progress = false;
                foreach (var (n, _) in fitting)
                {
                    var take = scorer.Packs ? capacity[n] : Math.Min(1, capacity[n]);
                    for (var k = 0; k < take && placed < job.Tasks; k++)
                    {
                        if (NodeFit.SliceFor(state.Node(group, n), t, scorer) is not { } s)
                        {
                            break;
                        }

                        slices[placed++] = s;
                        state.Apply(group, s, -1);
                        capacity[n]--;
                        progress = true;
                    }

                    if (placed == job.Tasks)
                    {
                        break;
                    }
                }

                if (!progress)
                {
                    return null;
                }
            }

            return new Allocation(group, slices);
        }
        finally
        {
            // Undo the tentative slices; the caller applies the allocation it keeps.
            for (var i = 0; i < placed; i++)
            {
                state.Apply(group, slices[i], +1);
            }
        }
    }

    /// <summary>One task: a single pass keeps the best-scoring node (ties to the lowest index), no sorting.</summary>
    private static Allocation? PlaceSingle(TaskResources t, int group, int nodes, ClusterState state, NodeScorer scorer)
    {
        var best = -1;
        var bestScore = double.MinValue;
        for (var n = 0; n < nodes; n++)
        {
            var view = state.Node(group, n);
            if (NodeFit.Capacity(view, t, 1) > 0)
            {
                var score = scorer.Score(view, t);
                if (score > bestScore)
                {
                    best = n;
                    bestScore = score;
                }
            }
        }

        return best >= 0 && NodeFit.SliceFor(state.Node(group, best), t, scorer) is { } slice ? new Allocation(group, [slice]) : null;
    }

    /// <summary>The last first-reservation and what it was computed from.</summary>
    private sealed record ReserveMemo(JobSpec Job, IReadOnlyList<int> Groups, ClusterState State, long Version, int Running, long Now, Reservation Result);

    /// <summary>
    /// <see cref="Reserve"/>, reusing the previous cycle's answer when nothing it read has changed: same job, no
    /// reservation ahead of it, no allocation changed since (state version), the same number of running jobs, and no
    /// running job past its requested end (so expected ends do not move with the clock). A cycle triggered only by
    /// arrivals then skips the walk over the running jobs; the reservation is the same one a fresh walk would find.
    /// </summary>
    private Reservation ReserveMemoized(JobSpec job, IReadOnlyList<int> groups, ClusterState state, List<RunningJob> running,
        List<Reservation> reservations, long now)
    {
        var cacheable = reservations.Count == 0;
        // The group list is the job's cached feasible groups unless funds narrowed it (then a fresh list: no reuse).
        if (cacheable && _memo is { } m && ReferenceEquals(m.Job, job) && ReferenceEquals(m.Groups, groups) && ReferenceEquals(m.State, state)
            && m.Version == state.Version && m.Running == running.Count && m.Result.Start > now && NoneOverran(running, now))
        {
            return m.Result;
        }

        var r = Reserve(job, groups, state, running, reservations, now);
        _memo = cacheable && NoneOverran(running, now) ? new ReserveMemo(job, groups, state, state.Version, running.Count, now, r) : null;
        return r;
    }

    private static bool NoneOverran(List<RunningJob> running, long now)
    {
        foreach (var r in running)
        {
            if (r.StartTime + r.Job.RequestedSeconds <= now)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// Earliest start for a blocked job: walk the running jobs by expected end, returning their resources, and take the
    /// first time at which the job fits with every reservation that overlaps its run held back.
    /// </summary>
    private Reservation Reserve(JobSpec job, IReadOnlyList<int> groups, ClusterState state, List<RunningJob> running,
        List<Reservation> reservations, long now)
    {
        var byEnd = new (long End, RunningJob Job)[running.Count];
        for (var i = 0; i < running.Count; i++)
        {
            byEnd[i] = (running[i].ExpectedEnd(now), running[i]);
        }

        Array.Sort(byEnd, static (a, b) => a.End != b.End ? a.End.CompareTo(b.End) : a.Job.Job.Id.CompareTo(b.Job.Job.Id));
        var times = new long[byEnd.Length + reservations.Count];
        var n = 0;
        foreach (var (end, _) in byEnd)
        {
            times[n++] = end;
        }

        foreach (var r in reservations)
        {
            times[n++] = r.End;
        }

        Array.Sort(times);
        var released = 0;
        try
        {
            for (var ti = 0; ti < times.Length; ti++)
            {
                var t = times[ti];
                if (t <= now || (ti > 0 && times[ti - 1] == t))
                {
                    continue;
                }

                while (released < byEnd.Length && byEnd[released].End <= t)
                {
                    state.Release(byEnd[released].Job.Allocation);
                    released++;
                }

                var end = t + Math.Max(1, job.RequestedSeconds);
                var overlaid = Overlay(state, reservations, t, end, -1);
                try
                {
                    foreach (var g in groups)
                    {
                        if (AggregateFits(job, state.Group(g)) && PlaceInGroup(job, g, state, Policy.NodeScorer) is { } alloc)
                        {
                            return new Reservation(job.Id, t, end, alloc);
                        }
                    }
                }
                finally
                {
                    if (overlaid)
                    {
                        Overlay(state, reservations, t, end, +1);
                    }
                }
            }
        }
        finally
        {
            for (var i = 0; i < released; i++)
            {
                state.Allocate(byEnd[i].Job.Allocation);
            }
        }

        // Unreachable for a job that passed the filters: once everything has ended and no reservation overlaps, it fits.
        throw new InvalidOperationException($"job {job.Id}: no reservation found although the filters admit it");
    }

    /// <summary>
    /// Preempts running jobs of lower priority class (lowest class first, most recently started first) until the job
    /// fits; preempts nothing if it would not fit even then.
    /// </summary>
    private Placement? TryPreempt(JobSpec job, IReadOnlyList<int> groups, ClusterState state, List<RunningJob> running, CycleResult result)
    {
        var victims = running.Where(r => r.Job.PriorityClass < job.PriorityClass && (!Policy.PreemptWithinTenant || string.Equals(r.Job.Tenant, job.Tenant, StringComparison.Ordinal)))
            .OrderBy(r => r.Job.PriorityClass).ThenByDescending(r => r.StartTime).ThenByDescending(r => r.Job.Id).ToList();
        var taken = 0;
        foreach (var v in victims)
        {
            state.Release(v.Allocation);
            taken++;
            var (alloc, candidates) = PlaceBest(job, groups, state);
            if (alloc is not null)
            {
                var preempts = new long[taken];
                for (var i = 0; i < taken; i++)
                {
                    result.Preempted.Add(victims[i]);
                    running.Remove(victims[i]);
                    preempts[i] = victims[i].Job.Id;
                }

                return new Placement(job, alloc, candidates) { Preempts = preempts };
            }
        }

        for (var i = 0; i < taken; i++)
        {
            state.Allocate(victims[i].Allocation);
        }

        return null;
    }

    /// <summary>
    /// Explains a job in words: for each node group the filter that rejects it, or its current room; and the wait
    /// reason from the last cycle when given.
    /// </summary>
    public IReadOnlyList<string> Explain(JobSpec job, ClusterState state, WaitReason? reason = null)
    {
        var lines = new List<string>();
        if (reason is { } r)
        {
            lines.Add(r.Kind switch
            {
                WaitKind.Reserved => $"waiting: reserved to start at t={r.At}",
                WaitKind.BehindBlockedJob => $"waiting: strict order, behind blocked job {r.BlockingJob}",
                WaitKind.WouldDelayReservation => $"waiting: does not fit beside the resources reserved for job {r.BlockingJob} (starting it could delay that job)",
                WaitKind.NoCapacityNow => "waiting: not enough free resources now",
                WaitKind.QuotaExceeded => $"waiting: tenant {job.Tenant} quota is used up",
                WaitKind.InsufficientFunds => $"waiting for funds: the cheapest group that can run it holds {Market.Money.Yuan(r.At)} in escrow for the time limit; tenant {job.Tenant} can put up {Market.Money.Yuan(Math.Max(0, r.BlockingJob))}",
                WaitKind.Dependencies or WaitKind.ArrayLimit or WaitKind.SpotNotAdmitted => $"waiting: held by admission ({r.Kind})",
                _ => "rejected: no node group can run this job",
            });
        }

        for (var g = 0; g < Pool.Groups.Count; g++)
        {
            // Live pools already name groups "provider/group"; trace pools name them per provider.
            var group = Pool.Groups[g];
            var name = group.Id.StartsWith(group.ProviderId + "/", StringComparison.Ordinal) ? group.Id : $"{group.ProviderId}/{group.Id}";
            if (FirstRejection(job, g) is { } rej)
            {
                lines.Add($"{name}: filtered by {rej}");
                continue;
            }

            var gs = state.Group(g);
            lines.Add(AggregateFits(job, gs) && PlaceInGroup(job, g, state, Policy.NodeScorer) is not null
                ? $"{name}: fits now"
                : $"{name}: no room now (free {gs.SumFreeCpu} milli-CPU, {gs.SumFreeMem} MiB, {gs.SumFreeGpu} milli-GPU; job needs {job.Task.MilliCpu * job.Tasks}, {job.Task.MemoryMiB * job.Tasks}, {job.Task.TotalGpuMilliOrWhole() * job.Tasks})");
        }

        return lines;
    }
}
