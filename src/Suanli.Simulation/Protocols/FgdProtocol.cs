using Suanli.Core.Domain;
using Suanli.Core.Scheduling;
using Suanli.Simulation.Traces;

namespace Suanli.Simulation.Protocols;

/// <summary>
/// The FGD artifact's evaluation protocol (../shared/traces/alibaba-pai-gpu-2023/PROTOCOL.md): per seed, shuffle the
/// openb tasks and inflate them to 130% of GPU capacity with Go's math/rand, rank nodes by a seeded permutation, place
/// tasks one by one with no departures using one node scorer of the core, and report the GPU allocation ratio at 100%
/// and 130% of capacity arrived with the artifact's analysis arithmetic.
/// </summary>
public static class FgdProtocol
{
    /// <summary>Placement policies of the protocol.</summary>
    public static IReadOnlyList<string> Policies { get; } = ["random", "bestfit", "dotprod", "gpu-packing", "gpu-clustering", "fgd", "suanli"];

    /// <summary>Seeds of the published means.</summary>
    public static IReadOnlyList<int> Seeds { get; } = [42, 43, 44, 45, 46, 47, 48, 49, 50, 51];

    /// <summary>The per-seed submission sequence and node ranks.</summary>
    public sealed record Workload(IReadOnlyList<PaiTask> Sequence, int Appended, long FinalRequestMilli, int[] Ranks);

    /// <summary>One seed's outcome.</summary>
    public sealed record SeedResult(int Seed, double AllocAt100, double AllocAt130, int Failed, long AllocatedGpuMilli, int Tasks, int Appended);

    /// <summary>The loaded inputs: tasks and nodes sorted by name.</summary>
    public sealed record Inputs(IReadOnlyList<PaiTask> Tasks, IReadOnlyList<PaiNode> Nodes, Trace Diagnostics);

    /// <summary>Loads a task list and the GPU node list beside it (or <paramref name="nodesPath"/>).</summary>
    public static Inputs Load(string tasksPath, string? nodesPath = null)
    {
        var diag = new Trace();
        var tasks = PaiReader.ReadTasks(tasksPath, diag).OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        nodesPath ??= Path.Combine(Path.GetDirectoryName(Path.GetFullPath(tasksPath)) ?? ".", "openb_node_list_gpu_node.csv.gz");
        var nodes = PaiReader.ReadNodes(nodesPath).Where(n => n.Gpus > 0).OrderBy(n => n.Name, StringComparer.Ordinal).ToList();
        return new Inputs(tasks, nodes, diag);
    }

    /// <summary>Builds the seed's workload: draws in the artifact's order (section 2 of the protocol).</summary>
    public static Workload BuildWorkload(Inputs inputs, int seed, long[] rngCooked, double tune = 1.3)
    {
        var rng = new GoRandom(seed, rngCooked);
        rng.Int63();
        var shuffled = inputs.Tasks.ToList();
        rng.Shuffle(shuffled);
        var capacity = inputs.Nodes.Sum(n => (long)n.Gpus) * 1000;
        var target = (long)(tune * capacity);
        var total = inputs.Tasks.Sum(t => t.Resources.TotalGpuMilli);
        var appended = 0;
        if (total < target)
        {
            while (true)
            {
                var pick = inputs.Tasks[rng.Intn(inputs.Tasks.Count)];
                if (total + pick.Resources.GpuMilli > target)
                {
                    break;
                }

                total += pick.Resources.TotalGpuMilli;
                shuffled.Add(pick);
                appended++;
            }
        }
        else
        {
            while (total > target)
            {
                var i = rng.Intn(shuffled.Count);
                total -= shuffled[i].Resources.TotalGpuMilli;
                shuffled.RemoveAt(i);
            }
        }

        for (var i = 0; i < 10; i++)
        {
            rng.Int63();
        }

        return new Workload(shuffled, appended, total, rng.Perm(inputs.Nodes.Count));
    }

    /// <summary>The FGD typical-task prior over the original tasks (section 3.3).</summary>
    public static List<TypicalTask> TypicalTasks(IReadOnlyList<PaiTask> tasks, int thresholdPercent = 95) =>
        TypicalTask.Of(tasks.Select(t => (t.Resources.MilliCpu, t.Resources.GpuMilli, t.Resources.GpuCount, t.GpuSpec)), thresholdPercent);

    /// <summary>Runs one seed with placement <paramref name="policy"/>.</summary>
    public static SeedResult RunSeed(Inputs inputs, string policy, int seed, long[] rngCooked, IReadOnlyList<TypicalTask>? typical = null)
    {
        var work = BuildWorkload(inputs, seed, rngCooked);
        var (pool, position) = PaiReader.BuildPool(inputs.Nodes);
        var state = new ClusterState(pool);
        var max = MaxSpec.Of(pool);
        NodeScorer? scorer = policy switch
        {
            "random" => null,
            "bestfit" => new BestFitNodeScorer(max),
            "dotprod" => new DotProductNodeScorer(max),
            "gpu-packing" => new GpuPackingNodeScorer(),
            "gpu-clustering" => new GpuClusteringNodeScorer(max),
            "fgd" => new FgdNodeScorer(typical ?? TypicalTasks(inputs.Tasks)),
            // Suanli's placement on GPU pools: FGD's gradient, CPU-only ties to the node with the fewest free cards (docs/policies.md).
            "suanli" => new SuanliNodeScorer(typical ?? TypicalTasks(inputs.Tasks)),
            _ => throw new ArgumentException($"policy: unknown FGD-protocol placement '{policy}'; choose one of {string.Join(", ", Policies)}", nameof(policy)),
        };

        // Nodes in rank order: rank 0 wins every tie, and Random's feasible list follows the renamed (rank-prefixed) names.
        var byRank = Enumerable.Range(0, inputs.Nodes.Count).OrderBy(i => work.Ranks[i]).Select(i => position[i]).ToArray();
        var rng = policy == "random" ? new GoRandom(seed, rngCooked) : null;
        // FGD-family scores depend only on the node's free CPU and cards (and its group's shape): memoised.
        var memo = scorer is FgdNodeScorer or SuanliNodeScorer ? new Dictionary<(int, long, ulong, ulong, TaskResources), (double, int)>() : null;
        var feasible = new List<(int Group, int Node)>(byRank.Length);
        var rows = new List<(long Used, long Arrived)>(work.Sequence.Count);
        long arrived = 0, used = 0;
        var failed = 0;
        foreach (var task in work.Sequence)
        {
            var t = task.Resources;
            arrived += t.TotalGpuMilli;
            rng?.Intn(100);
            feasible.Clear();
            foreach (var (g, n) in byRank)
            {
                var shape = pool.Groups[g].Shape;
                if (NodeFit.ShapeAdmits(shape, t) && NodeFit.Capacity(state.Node(g, n), t, 1) > 0)
                {
                    feasible.Add((g, n));
                }
            }

            Slice? slice = null;
            var chosen = -1;
            if (feasible.Count > 0)
            {
                if (rng is not null)
                {
                    chosen = rng.Intn(feasible.Count);
                    var (g, n) = feasible[chosen];
                    slice = RandomSlice(state.Node(g, n), t, rng);
                }
                else
                {
                    var best = double.MinValue;
                    var bestDevice = -1;
                    for (var i = 0; i < feasible.Count; i++)
                    {
                        var (g, n) = feasible[i];
                        var view = state.Node(g, n);
                        var (score, device) = memo is null ? (scorer!.Score(view, t), -1) : Memo(memo, g, view, t, scorer!);
                        if (score > best)
                        {
                            best = score;
                            chosen = i;
                            bestDevice = device;
                        }
                    }

                    var (cg, cn) = feasible[chosen];
                    var cview = state.Node(cg, cn);
                    slice = t.IsSharing && bestDevice >= 0
                        ? new Slice(cn, t.MilliCpu, t.MemoryMiB, 1UL << bestDevice, t.GpuMilli, t.Kind)
                        : NodeFit.SliceFor(cview, t, scorer!);
                }
            }

            if (slice is { } s)
            {
                state.Allocate(new Allocation(feasible[chosen].Group, [s]));
                used += t.TotalGpuMilli;
            }
            else
            {
                failed++;
                rng?.Int31n(int.MaxValue);
            }

            rows.Add((used, arrived));
        }

        var (at100, at130) = Columns(rows, inputs.Nodes.Sum(n => n.Gpus));
        return new SeedResult(seed, at100, at130, failed, used, work.Sequence.Count, work.Appended);
    }

    private static (double, int) Memo(Dictionary<(int, long, ulong, ulong, TaskResources), (double, int)> memo, int group, in NodeView view, TaskResources t, NodeScorer fgd)
    {
        ulong lo = 0, hi = 0;
        var free = view.FreeGpu;
        for (var d = 0; d < free.Length; d++)
        {
            if (d < 6)
            {
                lo |= (ulong)free[d] << (10 * d);
            }
            else
            {
                hi |= (ulong)free[d] << (10 * (d - 6));
            }
        }

        var key = (group, view.FreeMilliCpu, lo, hi, t);
        if (!memo.TryGetValue(key, out var value))
        {
            value = (fgd.Score(view, t), t.IsSharing ? fgd.ChooseSharingDevice(view, t) : -1);
            memo[key] = value;
        }

        return value;
    }

    private static Slice? RandomSlice(in NodeView view, TaskResources t, GoRandom rng)
    {
        if (!t.IsSharing)
        {
            return NodeFit.SliceFor(view, t, RandomDeviceScorer.Instance);
        }

        // Reservoir sampling over the cards that fit, one Intn per candidate.
        var free = view.FreeGpu;
        var pick = -1;
        var seen = 0;
        for (var d = 0; d < free.Length; d++)
        {
            if (free[d] >= t.GpuMilli && rng.Intn(++seen) == 0)
            {
                pick = d;
            }
        }

        return pick < 0 ? null : new Slice(view.Index, t.MilliCpu, t.MemoryMiB, 1UL << pick, t.GpuMilli, t.Kind);
    }

    /// <summary>
    /// Columns 100 and 130 of merge_alloc_discrete.py: arrive = round(A / G / 10) (half to even), alloc = round(U / G / 10, 2);
    /// column r = numpy mean of alloc over rows with arrive == r (rows within r ± 1 when none), rounded to 2 decimals.
    /// </summary>
    public static (double At100, double At130) Columns(IReadOnlyList<(long Used, long Arrived)> rows, long gpus)
    {
        var arrive = rows.Select(r => PyNum.Round(r.Arrived / (double)gpus / 10, 0)).ToArray();
        var alloc = rows.Select(r => PyNum.Round(r.Used / (double)gpus / 10, 2)).ToArray();
        double Column(int r)
        {
            var sel = Enumerable.Range(0, rows.Count).Where(i => arrive[i] == r).Select(i => alloc[i]).ToArray();
            if (sel.Length == 0)
            {
                sel = [.. Enumerable.Range(0, rows.Count).Where(i => arrive[i] >= r - 1 && arrive[i] <= r + 1).Select(i => alloc[i])];
            }

            return sel.Length == 0 ? double.NaN : PyNum.NumpyRound2(PyNum.PairwiseSum(sel) / sel.Length);
        }

        return (Column(100), Column(130));
    }

    private sealed class RandomDeviceScorer : NodeScorer
    {
        public static RandomDeviceScorer Instance { get; } = new();

        public override string Name => "random";

        public override double Score(in NodeView node, TaskResources task) => 0;
    }
}
