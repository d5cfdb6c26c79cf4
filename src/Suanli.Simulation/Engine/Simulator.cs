using Suanli.Core.Domain;
using Suanli.Core.Market;
using Suanli.Core.Scheduling;
using Suanli.Simulation.Traces;

namespace Suanli.Simulation.Engine;

/// <summary>One simulated job's outcome.</summary>
public sealed record JobOutcome(long Id, string Tenant, string Provider, string Group, long Submit, long Start, long End, long Run, int Tasks, decimal? Cost)
{
    public long Wait => Start - Submit;

    public double BoundedSlowdown => Math.Max((double)(Wait + Run) / Math.Max(Run, Simulator.Tau), 1.0);
}

/// <summary>A job the simulator did not run, with why.</summary>
public sealed record SkippedJob(long Id, string Reason);

/// <summary>
/// Discrete-event replay of a trace through the scheduling core. Events at one timestamp are applied together
/// (completions, then arrivals), then <see cref="Admission.Admit"/> (dependencies, array throttles) and one
/// <see cref="Scheduler.RunCycle"/> run on a virtual clock, as the control plane runs them. The scheduler never sees run
/// times; the simulator ends each job at start + its actual run time, successfully.
/// </summary>
public sealed class Simulator
{
    /// <summary>Bounded-slowdown threshold in seconds.</summary>
    public const long Tau = 10;

    private readonly Pool _pool;
    private readonly Scheduler _scheduler;
    private readonly IReadOnlyDictionary<string, Tenant>? _tenants;
    private readonly IReadOnlyDictionary<string, long>? _funds;

    /// <summary>
    /// Creates a simulator of <paramref name="pool"/> under <paramref name="policy"/>. <paramref name="funds"/> gives
    /// tenants a wallet (fen): a job on priced capacity holds its price for its time limit when it starts and is charged
    /// for the time it ran when it ends (the hold capping the charge), exactly as the control plane's escrow does; a job
    /// whose tenant cannot cover any hold waits for funds.
    /// </summary>
    public Simulator(Pool pool, Policy policy, IReadOnlyDictionary<string, Tenant>? tenants = null, IReadOnlyDictionary<string, long>? funds = null)
    {
        _pool = pool;
        _scheduler = new Scheduler(pool, policy);
        _tenants = tenants;
        _funds = funds;
    }

    /// <summary>Outcome of a replay.</summary>
    public sealed record Result(List<JobOutcome> Jobs, List<SkippedJob> Skipped, long Cycles, Pool Pool, IReadOnlyDictionary<long, long> FirstReservation);

    /// <summary>Replays <paramref name="jobs"/> (any order; arrivals are sorted by submit time, then id).</summary>
    public Result Run(IEnumerable<TraceJob> jobs)
    {
        var arrivals = jobs.OrderBy(j => j.Spec.SubmitTime).ThenBy(j => j.Spec.Id).ToList();
        var runTime = new Dictionary<long, long>(arrivals.Count);
        var state = new ClusterState(_pool);
        var pending = new Dictionary<long, JobSpec>();
        var running = new List<RunningJob>();
        var completions = new PriorityQueue<RunningJob, (long End, long Id)>();
        var fairShare = new FairShareLedger();
        var predictor = new RunTimePredictor();
        var poolCpu = _pool.Groups.Sum(g => (double)g.Shape.MilliCpu * g.NodeCount);
        var poolGpu = _pool.Groups.Sum(g => 1000.0 * g.Shape.AcceleratorCount * g.NodeCount);
        var outcomes = new List<JobOutcome>(arrivals.Count);
        var skipped = new List<SkippedJob>();
        var firstReservation = new Dictionary<long, long>();
        var next = 0;
        long cycles = 0;

        // Admission only when the trace uses it: a plain log replays without the per-cycle pass.
        var gated = arrivals.Any(j => j.Spec.After.Count > 0 || j.Spec.Array is not null);
        var ended = new Dictionary<long, JobFate>();
        var activeArrays = new Dictionary<long, int>();
        var admission = new AdmissionInput(id => ended.TryGetValue(id, out var f) ? f : runTime.ContainsKey(id) ? JobFate.Pending : JobFate.Missing, activeArrays);
        var funds = _funds is null ? null : new Dictionary<string, long>(_funds, StringComparer.Ordinal);
        var holds = new Dictionary<long, long>();
        var duplicates = new HashSet<TraceJob>(ReferenceEqualityComparer.Instance);
        foreach (var j in arrivals)
        {
            if (!runTime.TryAdd(j.Spec.Id, j.RunSeconds))
            {
                duplicates.Add(j);
            }
        }

        while (next < arrivals.Count || completions.Count > 0)
        {
            var tArrival = next < arrivals.Count ? arrivals[next].Spec.SubmitTime : long.MaxValue;
            var tDone = completions.TryPeek(out _, out var k) ? k.End : long.MaxValue;
            var now = Math.Min(tArrival, tDone);
            while (completions.TryPeek(out var r, out var key) && key.End == now)
            {
                completions.Dequeue();
                state.Release(r.Allocation);
                running.Remove(r);
                fairShare.Charge(r.Job.Tenant, FairShareLedger.DominantShare(r.Job, poolCpu, poolGpu) * (now - r.StartTime), now);
                predictor.Completed(r.Job, now - r.StartTime);
                ended[r.Job.Id] = JobFate.Succeeded;
                Ended(r, now);
            }

            while (next < arrivals.Count && arrivals[next].Spec.SubmitTime == now)
            {
                var arrival = arrivals[next++];
                var spec = arrival.Spec;
                if (duplicates.Count > 0 && duplicates.Contains(arrival))
                {
                    skipped.Add(new SkippedJob(spec.Id, "duplicate job id"));
                    continue;
                }

                if (_scheduler.FeasibleGroups(spec).Count == 0)
                {
                    skipped.Add(new SkippedJob(spec.Id, "infeasible: " + string.Join("; ", _scheduler.Explain(spec, state).Take(3))));
                    _scheduler.Forget(spec);
                    continue; // as live, where it stays queued: its dependents wait (and are reported never started)
                }

                pending.Add(spec.Id, spec);
            }

            if (pending.Count == 0)
            {
                continue;
            }

            IReadOnlyCollection<JobSpec> considered = pending.Values;
            if (gated)
            {
                var admitted = Admission.Admit(pending.Values, admission);
                foreach (var (job, reason) in admitted.Doomed)
                {
                    // The control plane cancels such a job; here it never runs.
                    pending.Remove(job.Id);
                    _scheduler.Forget(job);
                    ended[job.Id] = JobFate.Unsuccessful;
                    skipped.Add(new SkippedJob(job.Id, reason));
                }

                considered = admitted.Admitted;
            }

            if (considered.Count == 0)
            {
                continue;
            }

            cycles++;
            var result = _scheduler.RunCycle(new CycleInput(now, considered, running, _tenants, fairShare, RecordWaits: false, Predictor: predictor, Funds: funds), state);
            foreach (var rsv in result.Reservations)
            {
                firstReservation.TryAdd(rsv.JobId, rsv.Start);
            }

            foreach (var p in result.Preempted)
            {
                // A preempted job goes back to the queue and later restarts from scratch (no checkpoint is assumed).
                running.Remove(p);
                RemoveCompletion(completions, p);
                pending.Add(p.Job.Id, p.Job);
                Ended(p, now);
            }

            foreach (var placed in result.Started)
            {
                pending.Remove(placed.Job.Id);
                _scheduler.Forget(placed.Job);
                var rj = new RunningJob(placed.Job, now, placed.Allocation);
                running.Add(rj);
                var run = runTime[placed.Job.Id];
                completions.Enqueue(rj, (now + run, placed.Job.Id));
                if (placed.Job.Array is { } array)
                {
                    activeArrays[array.ArrayId] = activeArrays.GetValueOrDefault(array.ArrayId) + 1;
                }

                if (funds is not null && funds.TryGetValue(placed.Job.Tenant, out var wallet))
                {
                    var hold = Escrow.HoldFen(placed.Job, _pool.Groups[placed.Allocation.Group]);
                    funds[placed.Job.Tenant] = wallet - hold;
                    holds[placed.Job.Id] = hold;
                }

                var g = _pool.Groups[placed.Allocation.Group];
                var cost = Pricing.HourlyPrice(placed.Job, g) is { } h ? h * run / 3600m : (decimal?)null;
                outcomes.Add(new JobOutcome(placed.Job.Id, placed.Job.Tenant, g.ProviderId, g.Id, placed.Job.SubmitTime, now, now + run, run, placed.Job.Tasks, cost));
            }
        }

        foreach (var p in pending.Values)
        {
            skipped.Add(new SkippedJob(p.Id, "never started"));
        }

        // Gives back an ended (or preempted) run's array slot and settles its hold: charged for the time it ran, at most
        // the hold; the rest returns to the wallet.
        void Ended(RunningJob r, long at)
        {
            if (r.Job.Array is { } array)
            {
                activeArrays[array.ArrayId]--;
            }

            if (holds.Remove(r.Job.Id, out var hold))
            {
                var cost = Escrow.CostFen(r.Job, _pool.Groups[r.Allocation.Group], checked((at - r.StartTime) * 1000));
                funds![r.Job.Tenant] += hold - Math.Min(cost, hold);
            }
        }

        // A preempted job that restarted has two outcomes; keep its last run.
        var last = outcomes.GroupBy(o => o.Id).Select(g => g.Last()).OrderBy(o => o.Submit).ThenBy(o => o.Id).ToList();
        return new Result(last, skipped, cycles, _pool, firstReservation);
    }

    private static void RemoveCompletion(PriorityQueue<RunningJob, (long, long)> q, RunningJob job)
    {
        var keep = new List<(RunningJob, (long, long))>();
        while (q.TryDequeue(out var r, out var key))
        {
            if (!ReferenceEquals(r, job))
            {
                keep.Add((r, key));
            }
        }

        foreach (var (r, key) in keep)
        {
            q.Enqueue(r, key);
        }
    }
}
