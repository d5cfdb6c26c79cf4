using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using Suanli.Simulation.Traces;

namespace Suanli.Simulation.Protocols;

/// <summary>A job of the RLScheduler protocol: processors, requested time and run time after the loading rules.</summary>
public sealed record ProtocolJob(JobSpec Spec, long Run, int Nodes);

/// <summary>
/// The RLScheduler evaluation protocol (../shared/traces/RLSCHEDULER-PROTOCOL.md): ten 1,024-job windows of an SWF log,
/// each on an empty machine, replayed with the artifact's event loop (one event per step, the head job fixed while it
/// waits, shadow time computed once, backfilling only jobs that end strictly before it). Queue order comes from the
/// core's queue-order plugins, so the same policies run here and in the live scheduler.
/// </summary>
public static class RlSchedulerProtocol
{
    /// <summary>Window starts (indices into the kept jobs), drawn by the artifact with seed 1.</summary>
    public static IReadOnlyList<int> WindowStarts { get; } = [1981, 2756, 4299, 8850, 3316, 2714, 5228, 7762, 4022, 7085];

    /// <summary>Jobs per window.</summary>
    public const int WindowLength = 1024;

    /// <summary>The loaded log: node count, processors per node and the kept jobs in file order.</summary>
    public sealed record ProtocolLog(int Nodes, int ProcsPerNode, IReadOnlyList<ProtocolJob> Jobs, Trace Diagnostics);

    /// <summary>Loads an SWF log with the protocol's rules (processors = max(allocated, requested), run &lt; 0 → 10, keep run &gt; 0).</summary>
    public static ProtocolLog Load(string path)
    {
        var log = SwfReader.ReadRecords(path);
        var nodes = (int)Math.Max(1, log.MaxNodes);
        var ppn = (int)Math.Max(1, log.MaxProcs / nodes);
        var jobs = new List<ProtocolJob>();
        foreach (var r in log.Records)
        {
            var procs = Math.Max(r.AllocatedProcs, r.RequestedProcs);
            var run = r.Run;
            var req = r.RequestedTime == -1 ? run : r.RequestedTime;
            if (run < 0)
            {
                run = 10;
            }

            if (run <= 0)
            {
                log.Diagnostics.Skip(r.Line, "run time 0 (dropped by the protocol)");
                continue;
            }

            var needNodes = (int)((procs + ppn - 1) / ppn);
            var spec = new JobSpec(jobs.Count, r.User >= 0 ? "u" + r.User : Tenant.Unknown, new TaskResources(ppn * 1000, 0), Math.Max(1, needNodes), r.Submit, req);
            jobs.Add(new ProtocolJob(spec, run, needNodes));
        }

        return new ProtocolLog(nodes, ppn, jobs, log.Diagnostics);
    }

    /// <summary>Per-window result.</summary>
    public sealed record WindowResult(int Start, double AvgBoundedSlowdown, double AvgWaitSeconds, double Utilization, long MakespanSeconds);

    /// <summary>Runs one window with the protocol's loop. <paramref name="backfill"/> selects the protocol's backfilling.</summary>
    public static WindowResult RunWindow(ProtocolLog log, int start, QueueOrder order, bool backfill)
    {
        var jobs = log.Jobs;
        var end = Math.Min(jobs.Count, start + WindowLength);
        if (start < 0 || start >= end)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"window start {start} outside the {jobs.Count} kept jobs");
        }

        var sim = new Loop(log.Nodes, jobs, start, end, order);
        sim.Run(backfill);
        return sim.Result(start);
    }

    /// <summary>Runs all ten windows; the table value is the mean of the window values.</summary>
    public static (double Mean, IReadOnlyList<WindowResult> Windows) Run(ProtocolLog log, QueueOrder order, bool backfill)
    {
        var windows = WindowStarts.Select(s => RunWindow(log, s, order, backfill)).ToList();
        return (windows.Average(w => w.AvgBoundedSlowdown), windows);
    }

    private sealed class Loop
    {
        private readonly int nodes;
        private readonly IReadOnlyList<ProtocolJob> jobs;
        private readonly int first;
        private readonly int last;
        private readonly QueueOrder order;
        private readonly List<int> _queue = [];
        private readonly PriorityQueue<int, (long End, long Seq)> _running = new();
        private readonly List<int> _runningList = [];
        private readonly long[] _start;
        private readonly RunTimePredictor _predictor = new();
        private JobSpec? _lastStarted;
        private long _seq;
        private int _free;
        private long _now;
        private int _next;

        public Loop(int nodes, IReadOnlyList<ProtocolJob> jobs, int first, int last, QueueOrder order)
        {
            this.nodes = nodes;
            this.jobs = jobs;
            this.first = first;
            this.last = last;
            this.order = order;
            _start = Enumerable.Repeat(-1L, last - first).ToArray();
            _free = nodes;
            _now = jobs[first].Spec.SubmitTime;
            _next = first;
        }

        public void Run(bool backfill)
        {
            _queue.Add(_next++);
            while (true)
            {
                var head = Head();
                if (jobs[head].Nodes > _free)
                {
                    if (backfill)
                    {
                        Backfill(head);
                    }
                    else
                    {
                        while (jobs[head].Nodes > _free)
                        {
                            Step();
                        }
                    }
                }

                Start(head);
                if (!MoveForwardForJob())
                {
                    break;
                }
            }
        }

        private int Head()
        {
            var ctx = new QueueContext(_now, EmptyShares, _predictor, _lastStarted);
            var best = _queue[0];
            var bestKey = order.Key(jobs[best].Spec, ctx);
            for (var i = 1; i < _queue.Count; i++)
            {
                var j = _queue[i];
                var key = order.Key(jobs[j].Spec, ctx);
                if (QueueOrdering.Compare(jobs[j].Spec, key, jobs[best].Spec, bestKey) < 0)
                {
                    best = j;
                    bestKey = key;
                }
            }

            return best;
        }

        private void Start(int j)
        {
            _lastStarted = jobs[j].Spec;
            _start[j - first] = _now;
            _free -= jobs[j].Nodes;
            _running.Enqueue(j, (_now + jobs[j].Run, _seq++));
            _runningList.Add(j);
            _queue.Remove(j);
        }

        // One event: the next arrival if it comes no later than the next completion, else that completion.
        private void Step()
        {
            var hasRelease = _running.TryPeek(out var r, out var key);
            var release = hasRelease ? key.End : long.MaxValue;
            if (_next < last && jobs[_next].Spec.SubmitTime <= release)
            {
                _now = Math.Max(_now, jobs[_next].Spec.SubmitTime);
                _queue.Add(_next++);
                return;
            }

            if (!hasRelease)
            {
                throw new InvalidOperationException("protocol loop: waiting with nothing running and nothing to arrive");
            }

            _running.Dequeue();
            _runningList.Remove(r);
            _predictor.Completed(jobs[r].Spec, jobs[r].Run);
            _now = Math.Max(_now, release);
            _free += jobs[r].Nodes;
        }

        private bool MoveForwardForJob()
        {
            if (_queue.Count > 0)
            {
                return true;
            }

            if (_next >= last)
            {
                return false;
            }

            while (_queue.Count == 0)
            {
                Step();
            }

            return true;
        }

        private void Backfill(int head)
        {
            // Shadow time, once: walk running jobs by start + requested time until the head's processors are free.
            var byRequestEnd = _runningList.OrderBy(j => _start[j - first] + jobs[j].Spec.RequestedSeconds).ToList();
            var shadow = _now;
            var free = _free;
            foreach (var j in byRequestEnd)
            {
                free += jobs[j].Nodes;
                shadow = _start[j - first] + jobs[j].Spec.RequestedSeconds;
                if (free >= jobs[head].Nodes)
                {
                    break;
                }
            }

            while (jobs[head].Nodes > _free)
            {
                // Backfill in submit order (stable on arrival order) every job that fits and ends strictly before the shadow.
                var candidates = _queue.OrderBy(j => jobs[j].Spec.SubmitTime).ThenBy(j => j).ToList();
                foreach (var j in candidates)
                {
                    if (_now + jobs[j].Spec.RequestedSeconds < shadow && jobs[j].Nodes <= _free)
                    {
                        Start(j);
                    }
                }

                Step();
            }
        }

        public WindowResult Result(int windowStart)
        {
            double sum = 0, wait = 0, busy = 0;
            long lastEnd = 0;
            for (var j = first; j < last; j++)
            {
                var s = _start[j - first];
                var job = jobs[j];
                var w = s - job.Spec.SubmitTime;
                sum += Math.Max((double)(w + job.Run) / Math.Max(job.Run, 10), 1.0);
                wait += w;
                busy += (double)job.Run * job.Nodes;
                lastEnd = Math.Max(lastEnd, s + job.Run);
            }

            var n = last - first;
            var span = lastEnd - jobs[first].Spec.SubmitTime;
            return new WindowResult(windowStart, sum / n, wait / n, span > 0 ? busy / (span * (double)nodes) : 0, span);
        }

        private static readonly Dictionary<string, double> EmptyShares = [];
    }
}
