using System.Globalization;
using System.Text.Json;
using Suanli.Core.Domain;
using Suanli.Core.Market;
using Suanli.Core.Scheduling;
using Suanli.Server.Storage;

namespace Suanli.Server.Scheduling;

/// <summary>Where a pool group sits in its physical node group ("provider/group"): its first node there and how many it has.</summary>
public readonly record struct GroupSpan(string Physical, int Base, int Count);

/// <summary>One part of a lease, placed in the current pool: the pool group's index and the slices, numbered in that group.</summary>
public sealed record LeasePart(int Group, Slice[] Slices);

/// <summary>
/// The pool the scheduler sees, built from the ready providers' node groups and the live offers, with what the control
/// plane needs to carry its decisions out: which registered group and offer each pool group stands for, and where its
/// nodes are in the physical group (leases name nodes by their place there, so they survive re-partitioning).
/// </summary>
/// <param name="Pool">The core's pool.</param>
/// <param name="Sources">Per pool group: the provider's own group id and the offer selling it (null: unpriced capacity).</param>
/// <param name="Spans">Per pool group id: its span of the physical group.</param>
/// <param name="Priced">True when any group is sold at a price (the scheduler then needs the tenants' funds).</param>
/// <param name="NextChangeMs">The next time an offer's window opens or closes (the partition changes then).</param>
public sealed record PoolPartition(Pool Pool, IReadOnlyDictionary<int, (string LocalGroup, OfferRecord? Offer)> Sources,
    IReadOnlyDictionary<string, GroupSpan> Spans, bool Priced, long NextChangeMs)
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    /// <summary>The pool group that sells node <paramref name="node"/> of a physical group, or -1 when none sells it now.</summary>
    public int Locate(string physical, int node)
    {
        for (var i = 0; i < Pool.Groups.Count; i++)
        {
            if (Spans.TryGetValue(Pool.Groups[i].Id, out var span) && span.Physical == physical && node >= span.Base && node < span.Base + span.Count)
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>The lease's allocation as stored: its pool group, that group's first node in the physical group, the slices.</summary>
    public string Encode(string group, Allocation a) =>
        JsonSerializer.Serialize(new { group, @base = Spans.TryGetValue(group, out var span) ? span.Base : 0,
            slices = a.Slices.Select(s => new[] { s.Node, s.MilliCpu, s.MemoryMiB, (long)s.DeviceMask, s.GpuMilli, s.Kind }) }, Json);

    /// <summary>Reads a stored allocation (the inverse of <see cref="Encode"/>).</summary>
    public static (string Group, int Base, Slice[] Slices) Decode(string json)
    {
        using var d = JsonDocument.Parse(json);
        var group = d.RootElement.GetProperty("group").GetString()!;
        var first = d.RootElement.TryGetProperty("base", out var b) ? b.GetInt32() : 0;
        var slices = d.RootElement.GetProperty("slices").EnumerateArray().Select(s =>
        {
            var v = s.EnumerateArray().Select(x => x.GetInt64()).ToArray();
            return new Slice((int)v[0], v[1], v[2], (ulong)v[3], (int)v[4], (int)v[5]);
        }).ToArray();
        return (group, first, slices);
    }

    /// <summary>
    /// Where a stored lease's nodes are in this partition: a job leased before an offer existed, or on an offer since
    /// withdrawn, still holds its nodes, now possibly in several pool groups. Nodes no pool group sells any more (the
    /// provider left) are dropped.
    /// </summary>
    public IReadOnlyList<LeasePart> Place(string allocationJson)
    {
        var (group, first, slices) = Decode(allocationJson);
        var physical = group.Split('#')[0];
        return [.. slices.GroupBy(sl => Locate(physical, first + sl.Node))
            .Where(part => part.Key >= 0)
            .Select(part => new LeasePart(part.Key, [.. part.Select(sl => sl with { Node = first + sl.Node - Spans[Pool.Groups[part.Key].Id].Base })]))];
    }
}

/// <summary>
/// Builds the pool from registered node groups and offers, pure. A node group with live offers is sold in parts, one
/// pool group per offer (its tier, its nodes, its price), each a disjoint span of the physical group's nodes, so the
/// offers together never sell a node twice; a group without live offers is unpriced capacity open to every job.
/// </summary>
public static class PoolBuilder
{
    /// <param name="providers">Every provider; only ready ones with node groups contribute, in id order.</param>
    /// <param name="offers">Every offer; those live at <paramref name="nowMs"/> partition their group, in id order.</param>
    /// <param name="nowMs">The time the partition is for.</param>
    /// <param name="catalogue">Accelerator catalogue (an offer's unit per node).</param>
    /// <param name="latency">Region latencies for the core's pool.</param>
    /// <param name="prices">An offer's buyer price in fen per unit-hour and the spot price per node-hour's basis (fen).</param>
    public static PoolPartition Build(IEnumerable<ProviderRecord> providers, IEnumerable<OfferRecord> offers, long nowMs, AcceleratorCatalogue catalogue,
        IReadOnlyList<(string From, string To, int Ms)> latency, Func<OfferRecord, (long BuyerFen, long SpotFen)> prices)
    {
        ArgumentNullException.ThrowIfNull(prices);
        var ready = providers.Where(p => p.State == ProviderStates.Ready && p.Groups.Count > 0).OrderBy(p => p.Id).ToList();
        var allOffers = offers.ToList();
        var live = allOffers.Where(o => o.LiveAt(nowMs)).OrderBy(o => o.Id).ToLookup(o => (o.ProviderId, o.GroupId));
        var groups = new List<NodeGroup>();
        var sources = new Dictionary<int, (string, OfferRecord?)>();
        var spans = new Dictionary<string, GroupSpan>(StringComparer.Ordinal);
        foreach (var p in ready)
        {
            foreach (var g in p.Groups)
            {
                var shape = new NodeShape(g.MilliCpu, g.MemoryMiB, g.Accelerator, g.Accelerators, g.GpuSharing);
                var physical = $"{p.Name}/{g.Id}";
                var selling = live[(p.Id, g.Id)].ToList();
                if (selling.Count == 0)
                {
                    sources[groups.Count] = (g.Id, null);
                    spans[physical] = new GroupSpan(physical, 0, g.Nodes);
                    groups.Add(new NodeGroup(physical, p.Name, shape, g.Nodes, g.PricePerNodeHour));
                    continue;
                }

                var next = 0;
                foreach (var o in selling)
                {
                    var count = Math.Min(o.Nodes, g.Nodes - next);
                    if (PriceUnits.PerNode(o.Unit, shape, catalogue) is not { } perNode || count <= 0)
                    {
                        continue;
                    }

                    var id = $"{physical}#offer{o.Id}";
                    var (buyer, spot) = prices(o);
                    sources[groups.Count] = (g.Id, o);
                    spans[id] = new GroupSpan(physical, next, count);
                    groups.Add(new NodeGroup(id, p.Name, shape, count, spot * perNode / 100m,
                        new MarketTerms(o.Tier, o.TenantId?.ToString(CultureInfo.InvariantCulture), o.Id, buyer, perNode)));
                    next += count;
                }
            }
        }

        var nextChange = allOffers.Where(o => o.WithdrawnMs is null).SelectMany(o => new[] { o.ValidFromMs, o.ValidToMs }).Where(t => t > nowMs).DefaultIfEmpty(long.MaxValue).Min();
        var pool = new Pool([.. ready.Select(p => new Provider(p.Name, p.Region, p.Name))], groups, latency);
        return new PoolPartition(pool, sources, spans, groups.Any(g => g.Terms is { PriceFen: > 0 }), nextChange);
    }
}
