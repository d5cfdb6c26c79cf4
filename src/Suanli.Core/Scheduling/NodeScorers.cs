using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>
/// Scores a node for one task (higher is better) and chooses the card for a sharing task. Scorers must not mutate
/// state. Equal scores are broken by the caller (node rank or index), so scorers that truncate to integers, as the
/// Kubernetes framework does, keep that behaviour here.
/// </summary>
public abstract class NodeScorer
{
    /// <summary>Registered name.</summary>
    public abstract string Name { get; }

    /// <summary>When true, a gang fills the best node before moving on; when false tasks are spread one per node.</summary>
    public virtual bool Packs => true;

    /// <summary>Score of placing one task of <paramref name="task"/> on <paramref name="node"/>, which is known to fit it.</summary>
    public abstract double Score(in NodeView node, TaskResources task);

    /// <summary>The card for a sharing task: by default the best fit (least free that fits, lowest index).</summary>
    public virtual int ChooseSharingDevice(in NodeView node, TaskResources task) => NodeFit.BestFitDevice(node.FreeGpu, task.GpuMilli);
}

/// <summary>Normalisers for the FGD-family scorers: the largest node's CPU and card capacity (openb: 128,000 and 8,000).</summary>
public readonly record struct MaxSpec(double MilliCpu, double GpuMilli)
{
    /// <summary>Largest CPU and card capacity over the pool's node shapes (at least 1 each).</summary>
    public static MaxSpec Of(Pool pool) => new(
        Math.Max(1, pool.Groups.Max(g => g.Shape.MilliCpu)),
        Math.Max(1000, pool.Groups.Max(g => g.Shape.AcceleratorCount) * 1000.0));
}

/// <summary>Packs onto the node with least free resources left (CPU and cards weighted equally), as the FGD artifact's BestFit.</summary>
public sealed class BestFitNodeScorer(MaxSpec max) : NodeScorer
{
    public override string Name => "bestfit";

    public override double Score(in NodeView node, TaskResources task)
    {
        // Same operation order as the artifact's getBestFitScore so the truncated integers agree exactly.
        var s = 0.0;
        s += (node.FreeMilliCpu - task.MilliCpu) / max.MilliCpu * 0.5;
        s += (node.TotalFreeGpu - (double)task.TotalGpuMilliOrWhole()) / max.GpuMilli * 0.5;
        return (long)((1.0 - s) * 100);
    }
}

/// <summary>Spreads: prefers the node with most free resources (the mirror of best fit). Tasks of a gang go one per node.</summary>
public sealed class SpreadNodeScorer(MaxSpec max) : NodeScorer
{
    public override string Name => "spread";

    public override bool Packs => false;

    public override double Score(in NodeView node, TaskResources task) =>
        (((node.FreeMilliCpu - task.MilliCpu) / max.MilliCpu) + ((node.TotalFreeGpu - (double)task.TotalGpuMilliOrWhole()) / max.GpuMilli)) * 50;
}

/// <summary>
/// Smallest dot product of node free vector and task vector (the artifact's DotProd with merge dimension and max norm).
/// </summary>
public sealed class DotProductNodeScorer(MaxSpec max) : NodeScorer
{
    public override string Name => "dotprod";

    public override double Score(in NodeView node, TaskResources task)
    {
        var dot = (node.FreeMilliCpu / max.MilliCpu * (task.MilliCpu / max.MilliCpu))
            + (node.TotalFreeGpu / max.GpuMilli * (task.TotalGpuMilliOrWhole() / max.GpuMilli));
        return (long)(100 * (1 - (dot / 2)));
    }
}

/// <summary>Keeps tasks of one kind together (the artifact's GpuClustering).</summary>
public sealed class GpuClusteringNodeScorer(MaxSpec max) : NodeScorer
{
    public override string Name => "gpu-clustering";

    public override double Score(in NodeView node, TaskResources task)
    {
        if (task.GpuCount == 0)
        {
            return 0;
        }

        var kind = task.Kind;
        var b = (long)(25 * (max.GpuMilli - node.TotalFreeGpu) / max.GpuMilli);
        var counts = node.KindCounts;
        var same = counts[kind] > 0;
        var others = false;
        for (var k = 1; k < counts.Length; k++)
        {
            if (k != kind && counts[k] > 0)
            {
                others = true;
            }
        }

        return same && !others ? b + 75 : same ? b + 50 : !others ? b + 25 : b;
    }
}

/// <summary>Packs GPU tasks onto partly used cards first, then partly used nodes, then idle nodes (the artifact's GpuPacking).</summary>
public sealed class GpuPackingNodeScorer : NodeScorer
{
    public override string Name => "gpu-packing";

    public override double Score(in NodeView node, TaskResources task)
    {
        if (task.GpuCount == 0)
        {
            return 0;
        }

        var free = node.FreeGpu;
        var k = free.Length;
        var idle = 0;
        foreach (var f in free)
        {
            if (f == 1000)
            {
                idle++;
            }
        }

        if (idle == k)
        {
            return Math.Max(33 - k, k);
        }

        var g = NodeFit.CardShare(task);
        Span<int> order = stackalloc int[k];
        for (var i = 0; i < k; i++)
        {
            order[i] = i;
        }

        // Stable sort of card indices by free share (insertion sort: at most 8 cards).
        for (var i = 1; i < k; i++)
        {
            var x = order[i];
            var j = i - 1;
            while (j >= 0 && free[order[j]] > free[x])
            {
                order[j + 1] = order[j];
                j--;
            }

            order[j + 1] = x;
        }

        int taken = 0, usedIdle = 0;
        long sumPct = 0;
        for (var i = 0; i < k && taken < task.GpuCount; i++)
        {
            var f = free[order[i]];
            if (f >= g)
            {
                taken++;
                if (f == 1000)
                {
                    usedIdle++;
                }

                sumPct += f * 100 / 1000;
            }
        }

        return usedIdle > 0 ? Math.Max(50 - usedIdle, 33) : Math.Max(100 - (sumPct / 10), 50);
    }
}

/// <summary>
/// One kind of task in the FGD workload prior: resources and its frequency. Memory is ignored, as in the artifact.
/// </summary>
public sealed record TypicalTask(long MilliCpu, int GpuMilli, int GpuCount, string GpuSpec, double Frequency)
{
    internal TaskResources AsTask { get; } = new(MilliCpu, 0, GpuCount, GpuMilli,
        GpuSpec.Length == 0 ? [] : GpuSpec.Split('|'));

    /// <summary>The shape key of a task: CPU, card share, card count and allowed models ("|"-joined; memory ignored, as FGD does).</summary>
    public static (long Cpu, int Milli, int Count, string Spec) KeyOf(TaskResources task) =>
        (task.MilliCpu, task.GpuMilli, task.GpuCount, string.Join('|', task.Models));

    /// <summary>
    /// FGD's typical-task prior (GetTypicalPods): count tasks per shape, sort by count descending (ties by shape
    /// descending: CPU, share, count, models), keep the shortest prefix whose count reaches
    /// <paramref name="thresholdPercent"/> % of all tasks, and give each kept shape its share of the kept tasks.
    /// </summary>
    public static List<TypicalTask> Of(IEnumerable<(long Cpu, int Milli, int Count, string Spec)> tasks, int thresholdPercent = 95)
    {
        var counts = new Dictionary<(long Cpu, int Milli, int Count, string Spec), int>();
        foreach (var key in tasks)
        {
            counts[key] = counts.GetValueOrDefault(key) + 1;
        }

        return Of(counts, thresholdPercent);
    }

    /// <summary><see cref="Of(IEnumerable{ValueTuple{long, int, int, string}}, int)"/> from counts per shape.</summary>
    public static List<TypicalTask> Of(IReadOnlyDictionary<(long Cpu, int Milli, int Count, string Spec), int> counts, int thresholdPercent = 95)
    {
        var sorted = counts.Where(kv => kv.Value > 0).OrderByDescending(kv => kv.Value)
            .ThenByDescending(kv => kv.Key.Cpu).ThenByDescending(kv => kv.Key.Milli).ThenByDescending(kv => kv.Key.Count)
            .ThenByDescending(kv => kv.Key.Spec, StringComparer.Ordinal).ToList();
        double total = sorted.Sum(kv => (long)kv.Value);
        var expected = thresholdPercent * total / 100.0;
        double cum = 0;
        var kept = 0;
        while (cum < expected && kept < sorted.Count)
        {
            cum += sorted[kept].Value;
            kept++;
        }

        return [.. sorted.Take(kept).Select(kv => new TypicalTask(kv.Key.Cpu, kv.Key.Milli, kv.Key.Count, kv.Key.Spec,
            kv.Value / total / (cum / total)))];
    }
}

/// <summary>
/// Fragmentation Gradient Descent (Weng et al., ATC'23): places a task where the expected fragmentation of the node,
/// measured against the workload's typical tasks, grows least. Score = int(100 × sigmoid((F(before) − F(after)) / 1000)).
/// </summary>
public sealed class FgdNodeScorer(IReadOnlyList<TypicalTask> typical) : NodeScorer
{
    public override string Name => "fgd";

    /// <summary>The typical-task prior.</summary>
    public IReadOnlyList<TypicalTask> Typical => typical;

    public override double Score(in NodeView node, TaskResources task) => Evaluate(node, task, out _);

    public override int ChooseSharingDevice(in NodeView node, TaskResources task)
    {
        Evaluate(node, task, out var device);
        return device;
    }

    private long Evaluate(in NodeView node, TaskResources task, out int device)
    {
        device = -1;
        var free = node.FreeGpu;
        Span<int> after = stackalloc int[free.Length];
        free.CopyTo(after);
        var model = node.Shape.AcceleratorModel;
        var before = Fragmentation(node.FreeMilliCpu, free, model);
        if (task.IsSharing)
        {
            long best = 0;
            for (var d = 0; d < free.Length; d++)
            {
                if (free[d] < task.GpuMilli)
                {
                    continue;
                }

                after[d] -= task.GpuMilli;
                var score = (long)(Sigmoid((before - Fragmentation(node.FreeMilliCpu - task.MilliCpu, after, model)) / 1000) * 100);
                after[d] += task.GpuMilli;
                if (device < 0 || score > best)
                {
                    best = score;
                    device = d;
                }
            }

            return best;
        }

        if (task.GpuCount > 0)
        {
            var mask = NodeFit.WholeDevices(free, task.GpuCount, NodeFit.CardShare(task));
            for (var d = 0; d < after.Length; d++)
            {
                if ((mask & (1UL << d)) != 0)
                {
                    after[d] -= NodeFit.CardShare(task);
                }
            }
        }

        return (long)(Sigmoid((before - Fragmentation(node.FreeMilliCpu - task.MilliCpu, after, model)) / 1000) * 100);
    }

    private static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));

    /// <summary>
    /// Expected fragment (milli-GPU) of a node state against the typical tasks. Categories are accumulated separately
    /// in kind order and summed in the artifact's order (q1, q2, q4, xl, xr, no-access) to reproduce its rounding.
    /// </summary>
    public double Fragmentation(long freeMilliCpu, ReadOnlySpan<int> freeGpu, string? model)
    {
        double q1 = 0, q2 = 0, q4 = 0, xl = 0, xr = 0, na = 0;
        long left = 0;
        foreach (var f in freeGpu)
        {
            left += f;
        }

        foreach (var k in typical)
        {
            var p = k.Frequency;
            if (k.GpuMilli == 0)
            {
                if (freeMilliCpu >= k.MilliCpu)
                {
                    xl += p * left;
                }
                else
                {
                    xr += p * left;
                }

                continue;
            }

            if (model is null || !NodeFit.ModelAllowed(model, k.AsTask))
            {
                na += p * left;
                continue;
            }

            var need = k.GpuCount;
            var hosts = false;
            foreach (var f in freeGpu)
            {
                if (f >= k.GpuMilli && --need <= 0)
                {
                    hosts = true;
                    break;
                }
            }

            var cpuOk = freeMilliCpu >= k.MilliCpu;
            if (hosts && cpuOk)
            {
                long frag = 0;
                foreach (var f in freeGpu)
                {
                    if (f < k.GpuMilli)
                    {
                        frag += f;
                    }
                }

                q2 += p * frag;
            }
            else if (hosts)
            {
                q4 += p * left;
            }
            else if (cpuOk)
            {
                q2 += p * left;
            }
            else
            {
                q1 += p * left;
            }
        }

        return 0 + q1 + q2 + q4 + xl + xr + na;
    }
}

/// <summary>
/// Suanli's GPU placement: FGD's fragmentation gradient (<see cref="FgdNodeScorer"/>, same integer score), and among
/// nodes FGD scores equal, a task that asks for no card goes to the node with the fewest free card-milli. FGD cannot
/// tell those nodes apart (a CPU-only task changes no card, so the gradient is the same on each) and leaves the choice
/// to node order; spending CPU where the cards are already taken keeps CPU beside the free cards, where later card
/// tasks need it. Chosen on the gpushare100 and gpuspec33 lists, then scored once on the default list
/// (docs/policies.md).
/// </summary>
public sealed class SuanliNodeScorer(IReadOnlyList<TypicalTask> typical) : NodeScorer
{
    private readonly FgdNodeScorer _fgd = new(typical);

    public override string Name => "suanli";

    /// <summary>The typical-task prior.</summary>
    public IReadOnlyList<TypicalTask> Typical => typical;

    public override double Score(in NodeView node, TaskResources task)
    {
        var score = _fgd.Score(node, task);
        if (task.Kind != 0)
        {
            return score;
        }

        // FGD's scores are whole numbers; a fraction below 1/2, larger for fewer free card-milli, orders only its ties.
        long free = 0;
        foreach (var f in node.FreeGpu)
        {
            free += f;
        }

        return score + (0.5 / (1 + free));
    }

    public override int ChooseSharingDevice(in NodeView node, TaskResources task) => _fgd.ChooseSharingDevice(node, task);
}

/// <summary>Helpers on task resources used by the scorers.</summary>
public static class TaskResourceExtensions
{
    /// <summary>Total milli-GPU, counting an unset share as a whole card.</summary>
    public static long TotalGpuMilliOrWhole(this TaskResources t) => (long)t.GpuCount * NodeFit.CardShare(t);
}
