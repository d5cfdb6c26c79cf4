namespace Suanli.Core.Domain;

/// <summary>A compute provider (data centre, HPC centre, AI park) in a region, at a site.</summary>
public sealed record Provider(string Id, string Region, string Site);

/// <summary>
/// The shape of every node of a node group. Quantities carry their unit in the name: milli-CPU (1000 = one core),
/// MiB, accelerator count. <see cref="GpuSharing"/> allows tasks that ask for less than one card (milli-GPU) here.
/// </summary>
public sealed record NodeShape(
    long MilliCpu,
    long MemoryMiB,
    string? AcceleratorModel = null,
    int AcceleratorCount = 0,
    bool GpuSharing = false);

/// <summary>
/// A group of identical nodes at one provider. <see cref="PricePerNodeHour"/> is the on-demand price of one whole node
/// for one hour (null when the pool carries no prices); a job pays pro rata for what it allocates.
/// </summary>
public sealed record NodeGroup(
    string Id,
    string ProviderId,
    NodeShape Shape,
    int NodeCount,
    decimal? PricePerNodeHour = null,
    MarketTerms? Terms = null);

/// <summary>
/// The sales terms of a node group that is (part of) a live offer: its tier and, for a reserved contract, the only
/// tenant that may use it. A group without terms is unpriced capacity open to every job. <see cref="PriceFen"/> is what
/// a job pays per unit-hour (fen) and <see cref="UnitsPerNode"/> how many units one whole node provides per hour: a job
/// placed here holds its price for its time limit in escrow (<see cref="Market.Escrow.HoldFen"/>); null = nothing held
/// (a reserved contract paid up front).
/// </summary>
public sealed record MarketTerms(string Tier, string? ReservedFor = null, long? OfferId = null, long? PriceFen = null, decimal UnitsPerNode = 0);

/// <summary>
/// A resource pool: providers, their node groups and the network latency between regions (milliseconds, symmetric).
/// Immutable; build it once and share it between the scheduler and the simulator.
/// </summary>
public sealed class Pool
{
    private readonly Dictionary<string, Provider> _providers;
    private readonly Dictionary<(string, string), int> _latency = [];

    /// <summary>Creates a pool. Throws <see cref="ArgumentException"/> naming the field when the pool is inconsistent.</summary>
    public Pool(IEnumerable<Provider> providers, IEnumerable<NodeGroup> groups, IEnumerable<(string From, string To, int Ms)>? latency = null)
    {
        _providers = [];
        foreach (var p in providers)
        {
            if (!_providers.TryAdd(p.Id, p))
            {
                throw new ArgumentException($"providers: duplicate provider id '{p.Id}'", nameof(providers));
            }
        }

        Groups = [.. groups];
        var ids = new HashSet<string>(StringComparer.Ordinal);
        foreach (var g in Groups)
        {
            if (!ids.Add(g.Id))
            {
                throw new ArgumentException($"nodeGroups: duplicate node group id '{g.Id}'", nameof(groups));
            }

            if (!_providers.ContainsKey(g.ProviderId))
            {
                throw new ArgumentException($"nodeGroups[{g.Id}].provider: unknown provider '{g.ProviderId}'", nameof(groups));
            }
        }

        foreach (var (from, to, ms) in latency ?? [])
        {
            _latency[(from, to)] = ms;
            _latency[(to, from)] = ms;
        }
    }

    /// <summary>Node groups in declaration order; the index into this list is the group index used by cluster state.</summary>
    public IReadOnlyList<NodeGroup> Groups { get; }

    /// <summary>Providers by id.</summary>
    public IReadOnlyDictionary<string, Provider> Providers => _providers;

    /// <summary>The provider of group <paramref name="groupIndex"/>.</summary>
    public Provider ProviderOf(int groupIndex) => _providers[Groups[groupIndex].ProviderId];

    /// <summary>Latency between two regions in ms: 0 within a region, the declared value otherwise, null if unknown.</summary>
    public int? LatencyMs(string fromRegion, string toRegion) =>
        string.Equals(fromRegion, toRegion, StringComparison.Ordinal) ? 0
        : _latency.TryGetValue((fromRegion, toRegion), out var ms) ? ms : null;

    /// <summary>Total whole nodes in the pool.</summary>
    public long TotalNodes => Groups.Sum(g => (long)g.NodeCount);

    /// <summary>A single-provider pool of <paramref name="nodes"/> identical nodes (the SWF default cluster).</summary>
    public static Pool Uniform(int nodes, NodeShape shape, string region = "local") =>
        new([new Provider("local", region, "local")], [new NodeGroup("default", "local", shape, nodes)]);
}
