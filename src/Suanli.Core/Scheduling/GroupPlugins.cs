using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>An expected rejection: which plugin said no, and why, in words a user can act on.</summary>
public readonly record struct Rejection(string Plugin, string Reason)
{
    public override string ToString() => $"{Plugin}: {Reason}";
}

/// <summary>
/// Filter plugin over node groups. Filters look only at the job and the pool (never at free capacity), so their
/// results are cached per job; capacity is checked by the scheduler itself. Filters must not mutate anything.
/// </summary>
public interface IGroupFilter
{
    /// <summary>Registered name.</summary>
    string Name { get; }

    /// <summary>Null when the group may run the job, else the reason it may not.</summary>
    Rejection? Filter(JobSpec job, int group, Pool pool);

    /// <summary>
    /// Whether the group may run the job, without building a reason (the scheduler's hot path; filters whose reasons
    /// cost a string override it).
    /// </summary>
    bool Admits(JobSpec job, int group, Pool pool) => Filter(job, group, pool) is null;
}

/// <summary>Node hardware: enough CPU, memory and cards of an allowed model per node, and enough nodes for the gang.</summary>
public sealed class ShapeFilter : IGroupFilter
{
    public string Name => "shape";

    private enum Failure
    {
        None,
        Cpu,
        Memory,
        CardCount,
        Model,
        Sharing,
        Gang,
    }

    private static Failure FirstFailure(JobSpec job, NodeGroup g)
    {
        var s = g.Shape;
        var t = job.Task;
        if (t.MilliCpu > s.MilliCpu)
        {
            return Failure.Cpu;
        }

        if (t.MemoryMiB > s.MemoryMiB)
        {
            return Failure.Memory;
        }

        if (t.GpuCount > 0)
        {
            if (t.GpuCount > s.AcceleratorCount)
            {
                return Failure.CardCount;
            }

            if (!NodeFit.ModelAllowed(s.AcceleratorModel, t))
            {
                return Failure.Model;
            }

            if (t.IsSharing && !s.GpuSharing)
            {
                return Failure.Sharing;
            }
        }

        return PerNodeCapacity(s, t) * (long)g.NodeCount < job.Tasks ? Failure.Gang : Failure.None;
    }

    public bool Admits(JobSpec job, int group, Pool pool) => FirstFailure(job, pool.Groups[group]) == Failure.None;

    public Rejection? Filter(JobSpec job, int group, Pool pool)
    {
        var g = pool.Groups[group];
        var s = g.Shape;
        var t = job.Task;
        return FirstFailure(job, g) switch
        {
            Failure.None => null,
            Failure.Cpu => new(Name, $"task needs {t.MilliCpu} milli-CPU, nodes have {s.MilliCpu}"),
            Failure.Memory => new(Name, $"task needs {t.MemoryMiB} MiB, nodes have {s.MemoryMiB}"),
            Failure.CardCount => new(Name, $"task needs {t.GpuCount} x {ModelText(t)}, nodes have {s.AcceleratorCount} x {s.AcceleratorModel ?? "none"}"),
            Failure.Model => new(Name, $"task allows {ModelText(t)}, nodes have {s.AcceleratorModel}"),
            Failure.Sharing => new(Name, $"task shares a card ({t.GpuMilli} milli-GPU), group does not allow card sharing"),
            _ => new(Name, $"gang of {job.Tasks} tasks needs more than the group's {g.NodeCount} nodes hold ({PerNodeCapacity(s, t)} per node)"),
        };
    }

    /// <summary>Tasks of <paramref name="t"/> that one empty node of shape <paramref name="s"/> holds.</summary>
    public static long PerNodeCapacity(NodeShape s, TaskResources t)
    {
        var cap = long.MaxValue;
        if (t.MilliCpu > 0)
        {
            cap = Math.Min(cap, s.MilliCpu / t.MilliCpu);
        }

        if (t.MemoryMiB > 0)
        {
            cap = Math.Min(cap, s.MemoryMiB / t.MemoryMiB);
        }

        if (t.GpuCount > 0)
        {
            cap = Math.Min(cap, s.AcceleratorCount * (1000L / NodeFit.CardShare(t)) / t.GpuCount);
        }

        return cap == long.MaxValue ? 1 : cap;
    }

    private static string ModelText(TaskResources t) => t.Models.Count == 0 ? "any card" : string.Join('|', t.Models);
}

/// <summary>Allowed regions and providers.</summary>
public sealed class PlacementConstraintFilter : IGroupFilter
{
    public string Name => "constraints";

    public bool Admits(JobSpec job, int group, Pool pool)
    {
        var w = job.Where;
        var provider = pool.ProviderOf(group);
        return (w.Regions is not { Count: > 0 } regions || regions.Contains(provider.Region, StringComparer.Ordinal))
            && (w.Providers is not { Count: > 0 } providers || providers.Contains(provider.Id, StringComparer.Ordinal));
    }

    public Rejection? Filter(JobSpec job, int group, Pool pool)
    {
        var w = job.Where;
        var provider = pool.ProviderOf(group);
        if (w.Regions is { Count: > 0 } regions && !regions.Contains(provider.Region, StringComparer.Ordinal))
        {
            return new(Name, $"region {provider.Region} not in allowed regions [{string.Join(", ", regions)}]");
        }

        if (w.Providers is { Count: > 0 } providers && !providers.Contains(provider.Id, StringComparer.Ordinal))
        {
            return new(Name, $"provider {provider.Id} not in allowed providers [{string.Join(", ", providers)}]");
        }

        return null;
    }
}

/// <summary>Maximum network latency from the user's region.</summary>
public sealed class LatencyFilter : IGroupFilter
{
    public string Name => "latency";

    public bool Admits(JobSpec job, int group, Pool pool) =>
        job.Where.MaxLatencyMs is not { } max || job.Where.UserRegion is null
        || pool.LatencyMs(job.Where.UserRegion, pool.ProviderOf(group).Region) is { } ms && ms <= max;

    public Rejection? Filter(JobSpec job, int group, Pool pool)
    {
        var w = job.Where;
        if (w.MaxLatencyMs is not { } max || w.UserRegion is null)
        {
            return null;
        }

        var region = pool.ProviderOf(group).Region;
        var ms = pool.LatencyMs(w.UserRegion, region);
        return ms is null ? new(Name, $"latency {w.UserRegion} -> {region} unknown, job allows at most {max} ms")
            : ms > max ? new(Name, $"latency {w.UserRegion} -> {region} is {ms} ms, job allows at most {max} ms")
            : null;
    }
}

/// <summary>
/// Sales tier: a group sold under an offer takes only jobs buying that tier (on-demand when the job names none), and a
/// reserved contract only its tenant's jobs. Unpriced groups (no offer) take on-demand jobs only: a job that buys
/// reserved or interruptible capacity runs on that tier's capacity, where the contract or the auction pays for it.
/// </summary>
public sealed class TierFilter : IGroupFilter
{
    public string Name => "tier";

    public bool Admits(JobSpec job, int group, Pool pool)
    {
        var tier = job.Tier ?? Market.Tiers.OnDemand;
        return pool.Groups[group].Terms is not { } t
            ? string.Equals(tier, Market.Tiers.OnDemand, StringComparison.Ordinal)
            : string.Equals(t.Tier, tier, StringComparison.Ordinal) && (t.ReservedFor is null || string.Equals(t.ReservedFor, job.Tenant, StringComparison.Ordinal));
    }

    public Rejection? Filter(JobSpec job, int group, Pool pool)
    {
        if (Admits(job, group, pool))
        {
            return null;
        }

        var tier = job.Tier ?? Market.Tiers.OnDemand;
        return pool.Groups[group].Terms is not { } t ? new(Name, $"not sold as {tier} (no offer)")
            : t.Tier != tier ? new(Name, $"offered as {t.Tier}, job buys {tier}")
            : new(Name, $"reserved for tenant {t.ReservedFor}");
    }
}

/// <summary>Budget cap: the estimated cost at the group's price for the requested time must not exceed the budget.</summary>
public sealed class BudgetFilter : IGroupFilter
{
    public string Name => "budget";

    public bool Admits(JobSpec job, int group, Pool pool) =>
        job.Budget is not { } budget || Pricing.EstimatedCost(job, pool.Groups[group]) is not { } c || c <= budget;

    public Rejection? Filter(JobSpec job, int group, Pool pool)
    {
        if (job.Budget is not { } budget)
        {
            return null;
        }

        var cost = Pricing.EstimatedCost(job, pool.Groups[group]);
        return cost is { } c && c > budget ? new(Name, $"estimated cost {c:0.00} exceeds budget {budget:0.00}") : null;
    }
}

/// <summary>Prices of jobs on node groups.</summary>
public static class Pricing
{
    /// <summary>
    /// Share of one node a task takes: its largest fraction of the node's CPU, memory or cards. A job pays this share of
    /// the node price per task.
    /// </summary>
    public static decimal NodeFraction(TaskResources t, NodeShape s)
    {
        var f = Math.Max(t.MilliCpu / (double)Math.Max(1, s.MilliCpu), t.MemoryMiB / (double)Math.Max(1, s.MemoryMiB));
        if (s.AcceleratorCount > 0)
        {
            f = Math.Max(f, t.TotalGpuMilliOrWhole() / (1000.0 * s.AcceleratorCount));
        }

        return (decimal)Math.Min(1.0, f);
    }

    /// <summary>Price per hour of the whole job on the group; null when the group has no price.</summary>
    public static decimal? HourlyPrice(JobSpec job, NodeGroup g) =>
        g.PricePerNodeHour is { } p ? p * NodeFraction(job.Task, g.Shape) * job.Tasks : null;

    /// <summary>Price for the requested time; null when the group has no price.</summary>
    public static decimal? EstimatedCost(JobSpec job, NodeGroup g) =>
        HourlyPrice(job, g) is { } h ? h * job.RequestedSeconds / 3600m : null;
}

/// <summary>
/// Group scorer plugin: a raw value per candidate group; the scheduler normalises raw values min-max to [0, 100] over
/// the candidates (as Kubernetes' NormalizeScore) and sums them by weight.
/// </summary>
public interface IGroupScorer
{
    /// <summary>Registered name.</summary>
    string Name { get; }

    /// <summary>True when larger raw values are better.</summary>
    bool HigherIsBetter { get; }

    /// <summary>Raw value for running <paramref name="job"/> on <paramref name="group"/> now.</summary>
    double Raw(JobSpec job, int group, ClusterState state);
}

/// <summary>Fills groups: prefers the group whose dominant resource is most used after placement.</summary>
public sealed class BestFitGroupScorer : IGroupScorer
{
    public string Name => "bestfit";

    public bool HigherIsBetter => true;

    public double Raw(JobSpec job, int group, ClusterState state) => UsedAfter(job, group, state);

    internal static double UsedAfter(JobSpec job, int group, ClusterState state)
    {
        var g = state.Group(group);
        var s = g.Spec.Shape;
        var cpu = 1 - ((g.SumFreeCpu - (job.Task.MilliCpu * job.Tasks)) / (double)Math.Max(1, s.MilliCpu * g.Nodes));
        if (s.AcceleratorCount == 0)
        {
            return cpu;
        }

        var gpu = 1 - ((g.SumFreeGpu - (job.Task.TotalGpuMilliOrWhole() * job.Tasks)) / (1000.0 * s.AcceleratorCount * g.Nodes));
        return Math.Max(cpu, gpu);
    }
}

/// <summary>Balances load: prefers the emptiest group.</summary>
public sealed class SpreadGroupScorer : IGroupScorer
{
    public string Name => "spread";

    public bool HigherIsBetter => false;

    public double Raw(JobSpec job, int group, ClusterState state) => BestFitGroupScorer.UsedAfter(job, group, state);
}

/// <summary>Cheapest feasible: the job's hourly price on the group (unpriced groups count as free).</summary>
public sealed class PriceGroupScorer : IGroupScorer
{
    public string Name => "price";

    public bool HigherIsBetter => false;

    public double Raw(JobSpec job, int group, ClusterState state) =>
        (double)(Pricing.HourlyPrice(job, state.Pool.Groups[group]) ?? 0m);
}

/// <summary>Closest: network latency from the job's user region (unknown latency counts as 1,000 ms).</summary>
public sealed class LatencyGroupScorer : IGroupScorer
{
    public string Name => "latency";

    public bool HigherIsBetter => false;

    public double Raw(JobSpec job, int group, ClusterState state) =>
        job.Where.UserRegion is { } user ? state.Pool.LatencyMs(user, state.Pool.ProviderOf(group).Region) ?? 1000 : 0;
}

/// <summary>Data locality: prefers groups in the region holding the job's data.</summary>
public sealed class DataLocalityGroupScorer : IGroupScorer
{
    public string Name => "data";

    public bool HigherIsBetter => true;

    public double Raw(JobSpec job, int group, ClusterState state) =>
        job.Where.DataRegion is { } d && string.Equals(d, state.Pool.ProviderOf(group).Region, StringComparison.Ordinal) ? 1 : 0;
}

/// <summary>Heterogeneity: prefers faster accelerators (catalogue speed factor), per unit of price when priced.</summary>
public sealed class HeterogeneityGroupScorer(AcceleratorCatalogue catalogue) : IGroupScorer
{
    public string Name => "heterogeneity";

    public bool HigherIsBetter => true;

    public double Raw(JobSpec job, int group, ClusterState state)
    {
        var g = state.Pool.Groups[group];
        if (job.Task.GpuCount == 0 || g.Shape.AcceleratorModel is null)
        {
            return 1;
        }

        var speed = catalogue.Find(g.Shape.AcceleratorModel)?.SpeedFactor ?? 1.0;
        var price = Pricing.HourlyPrice(job, g);
        return price is { } p && p > 0 ? speed / (double)p : speed;
    }
}
