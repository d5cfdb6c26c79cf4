using Suanli.Core.Market;
using Suanli.Core.Scheduling;
using Suanli.Core.Domain;
using Suanli.Server.Scheduling;
using Suanli.Server.Storage;

namespace Suanli.Server.Tests;

/// <summary>The pool builder, pure: offers partition a physical group without overselling it, and leases survive re-partitioning.</summary>
public sealed class PoolBuilderTests
{
    private const long Now = 1_800_000_000_000;
    private static readonly AcceleratorCatalogue Catalogue = AcceleratorCatalogue.BuiltIn;

    private static ProviderRecord Provider(long id, string name, int nodes, string state = ProviderStates.Ready) =>
        new(id, name, "r", state, 1, Now, [new GroupOffer("g", 4000, 8192, null, 0, nodes, null)], Now);

    private static OfferRecord Offer(long id, int nodes, long from = Now - 1, long to = Now + 3_600_000, string tier = Tiers.OnDemand) =>
        new(id, 1, "g", tier, PriceUnits.CoreHour, 100, nodes, from, to, null, Now, null);

    private static PoolPartition Build(IEnumerable<OfferRecord> offers, long at = Now, params ProviderRecord[] providers) =>
        PoolBuilder.Build(providers.Length > 0 ? providers : [Provider(1, "p", 4)], offers, at, Catalogue, [], o => (o.PriceFen, o.PriceFen));

    [Fact]
    public void OffersSellDisjointSpans_NeverMoreNodesThanTheGroupHas()
    {
        // Two offers claim 3 nodes each of a 4-node group (the store refuses that, but a partition must hold anyway).
        var part = Build([Offer(1, 3), Offer(2, 3)]);
        Assert.Equal(["p/g#offer1", "p/g#offer2"], part.Pool.Groups.Select(g => g.Id));
        Assert.Equal([3, 1], part.Pool.Groups.Select(g => g.NodeCount));
        Assert.Equal(new GroupSpan("p/g", 3, 1), part.Spans["p/g#offer2"]);
        Assert.True(part.Priced);
        Assert.Equal(Now + 3_600_000, part.NextChangeMs);
        Assert.Equal(100, part.Pool.Groups[0].Terms!.PriceFen);
        Assert.Equal(2, part.Sources[1].Offer!.Id);
    }

    [Fact]
    public void WithoutLiveOffers_TheGroupIsOneUnpricedGroup_AndOnlyReadyProvidersCount()
    {
        var part = Build([Offer(1, 2, from: Now + 10), Offer(2, 2, to: Now)], Now, Provider(1, "p", 4), Provider(2, "q", 2, ProviderStates.Lost));
        var g = Assert.Single(part.Pool.Groups);
        Assert.Equal(("p/g", 4), (g.Id, g.NodeCount));
        Assert.Null(g.Terms);
        Assert.False(part.Priced);
        Assert.Equal(Now + 10, part.NextChangeMs);
        Assert.Null(part.Sources[0].Offer);
    }

    [Fact]
    public void ALeaseMadeBeforeAnOffer_KeepsItsNodes_InWhicheverPoolGroupSellsThemNow()
    {
        // Issue 13's double booking: a job leased on the whole group, then an offer partitions it. The job's nodes must
        // be found in the new partition (so they are not free there), numbered within the group that now sells them.
        var before = Build([]);
        var alloc = new Allocation(0, [new Slice(0, 1000, 512, 0, 0, 0), new Slice(3, 1000, 512, 0, 0, 0)]);
        var stored = before.Encode(before.Pool.Groups[0].Id, alloc);

        var after = Build([Offer(7, 2), Offer(8, 2)]);
        var parts = after.Place(stored);
        Assert.Equal(2, parts.Count);
        Assert.Equal(("p/g#offer7", 0), (after.Pool.Groups[parts[0].Group].Id, parts[0].Slices.Single().Node));
        Assert.Equal(("p/g#offer8", 1), (after.Pool.Groups[parts[1].Group].Id, parts[1].Slices.Single().Node));

        // A node no pool group sells now (a group with live offers sells only what they offer) is not placed at all.
        var narrow = Build([Offer(7, 2)]);
        Assert.Equal("p/g#offer7", narrow.Pool.Groups[Assert.Single(narrow.Place(stored)).Group].Id);
        Assert.Equal(-1, narrow.Locate("p/g", 3));
    }
}
