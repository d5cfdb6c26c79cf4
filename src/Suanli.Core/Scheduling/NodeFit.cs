using System.Numerics;
using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>Node-level feasibility and device choice. Pure functions over a <see cref="NodeView"/>.</summary>
public static class NodeFit
{
    /// <summary>Share per card, 1000 when a whole-card task left it unset.</summary>
    public static int CardShare(TaskResources t) => t.GpuMilli is > 0 and <= 1000 ? t.GpuMilli : 1000;

    /// <summary>
    /// True when the node's hardware can ever hold the task: it has enough cards of an allowed model (and allows
    /// sharing for a sharing task) and its capacity covers CPU and memory. Does not look at free resources.
    /// </summary>
    public static bool ShapeAdmits(NodeShape shape, TaskResources t)
    {
        if (t.MilliCpu > shape.MilliCpu || t.MemoryMiB > shape.MemoryMiB)
        {
            return false;
        }

        if (t.GpuCount == 0)
        {
            return true;
        }

        return t.GpuCount <= shape.AcceleratorCount && ModelAllowed(shape.AcceleratorModel, t)
            && (!t.IsSharing || shape.GpuSharing);
    }

    /// <summary>True when the model is allowed by the task (empty list = any model; CPU-only tasks accept anything).</summary>
    public static bool ModelAllowed(string? model, TaskResources t)
    {
        if (t.GpuCount == 0 || t.Models.Count == 0)
        {
            return true;
        }

        if (model is null)
        {
            return false;
        }

        foreach (var m in t.Models)
        {
            if (string.Equals(m, model, StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>How many copies of <paramref name="t"/> fit on the node now, capped at <paramref name="max"/>.</summary>
    public static int Capacity(in NodeView n, TaskResources t, int max)
    {
        var cap = max;
        if (t.MilliCpu > 0)
        {
            cap = (int)Math.Min(cap, Math.Max(0, n.FreeMilliCpu) / t.MilliCpu);
        }
        else if (n.FreeMilliCpu < 0)
        {
            return 0;
        }

        if (t.MemoryMiB > 0)
        {
            cap = (int)Math.Min(cap, Math.Max(0, n.FreeMemoryMiB) / t.MemoryMiB);
        }
        else if (n.FreeMemoryMiB < 0)
        {
            return 0;
        }

        if (cap == 0 || t.GpuCount == 0)
        {
            return cap;
        }

        var g = CardShare(t);
        var slots = 0;
        foreach (var f in n.FreeGpu)
        {
            if (f >= g)
            {
                slots += f / g;
            }
        }

        return Math.Min(cap, slots / t.GpuCount);
    }

    /// <summary>The card with the least free share that still fits <paramref name="share"/> (lowest index on ties); -1 if none.</summary>
    public static int BestFitDevice(ReadOnlySpan<int> free, int share)
    {
        var best = -1;
        for (var d = 0; d < free.Length; d++)
        {
            if (free[d] >= share && (best < 0 || free[d] < free[best]))
            {
                best = d;
            }
        }

        return best;
    }

    /// <summary>
    /// Devices for a multi-card or whole-card task: the lowest-index cards that can each hold <paramref name="share"/>
    /// (for whole cards: the lowest-index idle cards). 0 when they do not fit.
    /// </summary>
    public static ulong WholeDevices(ReadOnlySpan<int> free, int count, int share)
    {
        ulong mask = 0;
        var taken = 0;
        for (var d = 0; d < free.Length && taken < count; d++)
        {
            if (free[d] >= share)
            {
                mask |= 1UL << d;
                taken++;
            }
        }

        return taken == count ? mask : 0;
    }

    /// <summary>Builds the slice for one task on a node, choosing devices with <paramref name="scorer"/>; null if it does not fit.</summary>
    public static Slice? SliceFor(in NodeView n, TaskResources t, NodeScorer scorer)
    {
        if (Capacity(n, t, 1) == 0)
        {
            return null;
        }

        if (t.GpuCount == 0)
        {
            return new Slice(n.Index, t.MilliCpu, t.MemoryMiB, 0, 0, t.Kind);
        }

        var share = CardShare(t);
        ulong mask;
        if (t.IsSharing)
        {
            var d = scorer.ChooseSharingDevice(n, t);
            mask = d < 0 ? 0 : 1UL << d;
        }
        else
        {
            mask = WholeDevices(n.FreeGpu, t.GpuCount, share);
        }

        return mask == 0 ? null : new Slice(n.Index, t.MilliCpu, t.MemoryMiB, mask, share, t.Kind);
    }

    /// <summary>Number of devices in a mask.</summary>
    public static int DeviceCount(ulong mask) => BitOperations.PopCount(mask);
}
