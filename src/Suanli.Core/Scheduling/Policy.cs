using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>How jobs behind a blocked job may start.</summary>
public enum BackfillMode
{
    /// <summary>Strict order: the first job that cannot start blocks the rest.</summary>
    None,

    /// <summary>EASY (Lifka 1995): the first blocked job gets a reservation; later jobs start if they do not delay it.</summary>
    Easy,

    /// <summary>Conservative (Mu'alem and Feitelson 2001): every blocked job up to the depth gets a reservation.</summary>
    Conservative,
}

/// <summary>A weighted group scorer in a policy.</summary>
public sealed record WeightedScorer(IGroupScorer Scorer, double Weight);

/// <summary>
/// A named composition of plugins (a Kubernetes scheduler "profile"): queue order, group filters, group scorers with
/// weights, the node scorer that places tasks inside a group, backfilling and preemption. With
/// <see cref="PreemptWithinTenant"/> a job preempts only lower-class jobs of its own tenant (on a platform shared by
/// strangers a tenant's priority classes order its own work; capacity taken from others is bought on the spot tier).
/// </summary>
public sealed record Policy(
    string Name,
    QueueOrder Order,
    IReadOnlyList<IGroupFilter> Filters,
    IReadOnlyList<WeightedScorer> Scorers,
    NodeScorer NodeScorer,
    BackfillMode Backfill,
    int ReservationDepth = 1,
    bool Preemption = false,
    bool EnforceQuotas = true,
    bool PreemptWithinTenant = false)
{
    /// <summary>Same policy with another backfill mode (EASY keeps depth 1; conservative defaults to 64 reservations).</summary>
    public Policy WithBackfill(BackfillMode mode, int? depth = null) => this with
    {
        Backfill = mode,
        ReservationDepth = depth ?? (mode == BackfillMode.Conservative ? 64 : 1),
    };
}

/// <summary>
/// The explicit registration table of built-in plugins and policies (no assembly scanning).
/// </summary>
public static class PolicyRegistry
{
    /// <summary>Queue-order policy names.</summary>
    public static IReadOnlyList<string> PolicyNames { get; } = ["fcfs", "sjf", "saf", "f1", "fair-share", "suanli"];

    /// <summary>Node placement names.</summary>
    public static IReadOnlyList<string> PlacementNames { get; } =
        ["bestfit", "spread", "price", "latency", "heterogeneity", "fgd", "suanli", "dotprod", "gpu-packing", "gpu-clustering"];

    /// <summary>The default filters, in order.</summary>
    public static IReadOnlyList<IGroupFilter> DefaultFilters { get; } =
        [new ShapeFilter(), new PlacementConstraintFilter(), new LatencyFilter(), new TierFilter(), new BudgetFilter()];

    /// <summary>Builds queue order <paramref name="name"/>; throws <see cref="ArgumentException"/> naming the choices.</summary>
    public static QueueOrder Order(string name) => name switch
    {
        "fcfs" => new FcfsOrder(),
        "sjf" => new SjfOrder(),
        "saf" => new SafOrder(),
        "f1" => new F1Order(),
        "fair-share" => new FairShareOrder(),
        "suanli" => new SuanliOrder(),
        _ => throw new ArgumentException($"policy: unknown policy '{name}'; choose one of {string.Join(", ", PolicyNames)}", nameof(name)),
    };

    /// <summary>
    /// Builds policy <paramref name="name"/> with placement <paramref name="placement"/> on <paramref name="pool"/>.
    /// Group scorers: bestfit (or spread/price/latency/heterogeneity when named) plus data locality; node scorer:
    /// bestfit unless a GPU placement (fgd, suanli, dotprod, gpu-packing, gpu-clustering, spread) is named.
    /// </summary>
    public static Policy Build(string name, Pool pool, string placement = "bestfit", BackfillMode backfill = BackfillMode.Easy,
        AcceleratorCatalogue? catalogue = null, IReadOnlyList<TypicalTask>? typical = null)
    {
        var order = Order(name);
        var max = MaxSpec.Of(pool);
        catalogue ??= AcceleratorCatalogue.BuiltIn;
        IGroupScorer group = placement switch
        {
            "spread" => new SpreadGroupScorer(),
            "price" => new PriceGroupScorer(),
            "latency" => new LatencyGroupScorer(),
            "heterogeneity" => new HeterogeneityGroupScorer(catalogue),
            _ when PlacementNames.Contains(placement) => new BestFitGroupScorer(),
            _ => throw new ArgumentException($"placement: unknown placement '{placement}'; choose one of {string.Join(", ", PlacementNames)}", nameof(placement)),
        };
        NodeScorer node = placement switch
        {
            "spread" => new SpreadNodeScorer(max),
            "dotprod" => new DotProductNodeScorer(max),
            "gpu-packing" => new GpuPackingNodeScorer(),
            "gpu-clustering" => new GpuClusteringNodeScorer(max),
            "fgd" => new FgdNodeScorer(typical ?? []),
            "suanli" => new SuanliNodeScorer(typical ?? []),
            _ => new BestFitNodeScorer(max),
        };
        var policy = new Policy(name, order, DefaultFilters,
            [new WeightedScorer(group, 1.0), new WeightedScorer(new DataLocalityGroupScorer(), 0.5)], node, backfill);
        return policy.WithBackfill(backfill);
    }
}
