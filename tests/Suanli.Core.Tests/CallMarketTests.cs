using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Suanli.Core.Domain;
using Suanli.Core.Market;
using Suanli.Core.Scheduling;

namespace Suanli.Core.Tests;

public class CallMarketTests
{
    private static List<Order> Units(params long[] prices) => [.. prices.Select((p, i) => new Order(i + 1, i + 1, 1, p, i))];

    [Fact]
    public void AllEfficientTradesHappen_AtTheMidpointOfTheFirstLosers()
    {
        // Bid lots 10, 9, 8, 3; ask lots 2, 4, 6, 12: k = 3 (8 >= 6, 3 < 12); p0 = floor((3 + 12) / 2) = 7 in [6, 8].
        var c = CallMarket.Clear(Units(10, 9, 8, 3), Units(2, 4, 6, 12));
        Assert.Equal((3L, 3L, 7L, 7L, false), (c.Volume, c.EfficientVolume, c.BuyerPriceFen, c.SellerPriceFen, c.Reduced));
        Assert.Equal([1L, 2L, 3L], c.BidFills.Select(f => f.OrderId));
        Assert.Equal([1L, 2L, 3L], c.AskFills.Select(f => f.OrderId));
        Assert.Equal(0, c.SurplusFen);
    }

    [Fact]
    public void MidpointIsRoundedDown_AndMustLieBetweenTheMarginalPair()
    {
        // k = 2 (9 >= 4, 5 < 6); p0 = floor((5 + 6) / 2) = 5 in [4, 9].
        var c = CallMarket.Clear(Units(10, 9, 5), Units(2, 4, 6, 8));
        Assert.Equal((2L, 5L, 5L, false), (c.Volume, c.BuyerPriceFen, c.SellerPriceFen, c.Reduced));
    }

    [Fact]
    public void TradeReduction_DropsTheMarginalPair_AndKeepsTheSpread()
    {
        // k = 2 (9 >= 8); p0 = (1 + 20) / 2 = 10 is not in [8, 9]: one lot trades, buyers pay b_k = 9, sellers get a_k = 8.
        var c = CallMarket.Clear(Units(10, 9, 1), Units(2, 8, 20));
        Assert.Equal((1L, 2L, 9L, 8L, true), (c.Volume, c.EfficientVolume, c.BuyerPriceFen, c.SellerPriceFen, c.Reduced));
        Assert.Equal(1, c.SurplusFen);
        Assert.Equal(1, Assert.Single(c.BidFills).OrderId);
        Assert.Equal(1, Assert.Single(c.AskFills).OrderId);
    }

    [Fact]
    public void MultiLotOrders_AreClearedLotByLot()
    {
        // Bid A 3 lots at 10, B 2 at 6; ask X 2 at 3, Y 4 at 7. Lots 10,10,10,6,6 vs 3,3,7,7,7,7: k = 3 (10 >= 7, 6 < 7);
        // p0 = floor((6 + 7) / 2) = 6 < a_k = 7: reduce to 2 lots, A buys 2 at 10, X sells 2 at 7.
        var bids = new List<Order> { new(1, 100, 3, 10, 0), new(2, 200, 2, 6, 1) };
        var asks = new List<Order> { new(3, 300, 2, 3, 0), new(4, 400, 4, 7, 1) };
        var c = CallMarket.Clear(bids, asks);
        Assert.Equal((2L, 3L, 10L, 7L), (c.Volume, c.EfficientVolume, c.BuyerPriceFen, c.SellerPriceFen));
        Assert.Equal(new Fill(1, 100, 2), Assert.Single(c.BidFills));
        Assert.Equal(new Fill(3, 300, 2), Assert.Single(c.AskFills));
    }

    [Fact]
    public void ExcessSupply_PricesAtTheFirstLosingAsk()
    {
        // k = 2; no losing bid; p0 = the first losing ask, 3, in [2, 9].
        var c = CallMarket.Clear(Units(10, 9), Units(1, 2, 3));
        Assert.Equal((2L, 3L, 3L, false), (c.Volume, c.BuyerPriceFen, c.SellerPriceFen, c.Reduced));
    }

    [Fact]
    public void NoCross_OrALonePair_TradesNothing()
    {
        Assert.Equal(0, CallMarket.Clear(Units(1), Units(5)).Volume);
        var lone = CallMarket.Clear(Units(10), Units(5));
        Assert.Equal((0L, 1L, true), (lone.Volume, lone.EfficientVolume, lone.Reduced));
        Assert.Equal(0, CallMarket.Clear([], Units(5)).Volume);
    }

    [Fact]
    public void PriceTies_GoToTheEarlierOrder()
    {
        var bids = new List<Order> { new(1, 1, 1, 10, 5), new(2, 2, 1, 10, 1), new(3, 3, 1, 1, 9) };
        var c = CallMarket.Clear(bids, Units(2, 3, 30)); // k = 2, reduced to 1: the tie at 10 goes to seq 1
        Assert.Equal(2, Assert.Single(c.BidFills).OrderId);
    }

    [Fact]
    public void BadOrders_AreRefusedNamingTheSide()
    {
        var e = Assert.Throws<ArgumentException>(() => CallMarket.Clear([new Order(1, 1, 0, 5, 0)], []));
        Assert.Contains("bids[0]", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => CallMarket.Clear([], [new Order(1, 1, 1, -5, 0)]));
        Assert.Contains("asks[0]", e.Message, StringComparison.Ordinal);
    }

    private static (List<Order> Bids, List<Order> Asks) RandomBook(System.Random rng, bool unit)
    {
        List<Order> Side(int idBase) => [.. Enumerable.Range(0, rng.Next(0, 12)).Select(i =>
            new Order(idBase + i, idBase + i, unit ? 1 : rng.Next(1, 5), rng.Next(0, 40), rng.Next(0, 1000)))];
        return (Side(0), Side(1000));
    }

    /// <summary>The efficient volume by brute force: expand lots, sort, count crossing pairs.</summary>
    private static long EfficientVolume(List<Order> bids, List<Order> asks)
    {
        var b = bids.SelectMany(o => Enumerable.Repeat(o.LimitFen, (int)o.Lots)).OrderByDescending(x => x).ToList();
        var a = asks.SelectMany(o => Enumerable.Repeat(o.LimitFen, (int)o.Lots)).OrderBy(x => x).ToList();
        return Enumerable.Range(0, Math.Min(a.Count, b.Count)).Count(i => b[i] >= a[i]);
    }

    [Property(MaxTest = 500)]
    public Property Clearing_IsBudgetBalanced_IndividuallyRational_AndNearlyEfficient(int seed, bool unit)
    {
        var (bids, asks) = RandomBook(new System.Random(seed), unit);
        var c = CallMarket.Clear(bids, asks);
        var k = EfficientVolume(bids, asks);
        var byId = bids.Concat(asks).ToDictionary(o => o.Id);
        return (c.EfficientVolume == k).Label($"efficient volume {c.EfficientVolume} != brute force {k}")
            .And(c.Volume == k || c.Volume == k - 1 || (k == 0 && c.Volume == 0)).Label("volume is k or k-1")
            .And(c.BidFills.Sum(f => f.Lots) == c.Volume && c.AskFills.Sum(f => f.Lots) == c.Volume).Label("fills match volume")
            .And(c.Volume == 0 || c.BuyerPriceFen >= c.SellerPriceFen).Label("budget balanced")
            .And(c.BidFills.All(f => byId[f.OrderId].LimitFen >= c.BuyerPriceFen && f.Lots <= byId[f.OrderId].Lots)).Label("no buyer pays above its bid")
            .And(c.AskFills.All(f => byId[f.OrderId].LimitFen <= c.SellerPriceFen && f.Lots <= byId[f.OrderId].Lots)).Label("no seller gets below its ask");
    }

    [Property(MaxTest = 500)]
    public Property UnitTraders_CannotGainByMisreporting(int seed, bool buyer, byte truth, byte report)
    {
        // One unit trader with true value v among random unit orders: reporting v is at least as good as reporting r.
        var (bids, asks) = RandomBook(new System.Random(seed), unit: true);
        long v = truth % 41, r = report % 41;
        double Utility(long said)
        {
            var me = new Order(9999, 9999, 1, said, 500);
            var c = buyer ? CallMarket.Clear([.. bids, me], asks) : CallMarket.Clear(bids, [.. asks, me]);
            var won = (buyer ? c.BidFills : c.AskFills).Any(f => f.OrderId == 9999);
            return !won ? 0 : buyer ? v - c.BuyerPriceFen : c.SellerPriceFen - v;
        }

        var honest = Utility(v);
        var lie = Utility(r);
        return (honest >= lie).Label($"{(buyer ? "buyer" : "seller")} value {v}: truthful utility {honest} < {lie} when reporting {r}");
    }

    [Fact]
    public void Charging_IsPerBlockedShareOfTheNode_InTheOffersUnit()
    {
        var shape = new NodeShape(32_000, 256 * 1024, "A100", 8);
        var perNode = PriceUnits.PerNode(PriceUnits.CardHour, shape, AcceleratorCatalogue.BuiltIn)!.Value;
        Assert.Equal(8m, perNode);

        // Two cards with a matching CPU share = 2 card-hour units per hour; at 1,000 fen per card-hour for 90 minutes = 3,000 fen.
        var units = Charging.UnitsMilli(new TaskResources(8_000, 64 * 1024, 2, 1000), 1, shape, perNode);
        Assert.Equal(2000, units);
        Assert.Equal(3000, Charging.Cost(1000, units, 90 * 60_000));

        // A CPU-only job blocking half the node's cores pays for half the node's cards.
        Assert.Equal(4000, Charging.UnitsMilli(new TaskResources(16_000, 1024), 1, shape, perNode));
        Assert.Null(PriceUnits.PerNode(PriceUnits.CardHour, new NodeShape(8000, 1024), AcceleratorCatalogue.BuiltIn));
        Assert.Equal(312m * 8, PriceUnits.PerNode(PriceUnits.Fp16TflopsHour, shape, AcceleratorCatalogue.BuiltIn));
        Assert.Equal(1, Charging.Cost(1, 1000, 1_800_000)); // 0.5 fen rounds half up
        Assert.Equal(1234, Money.ParseYuan("12.34"));
        Assert.Null(Money.ParseYuan("1.234"));
        Assert.Equal("-0.05", Money.Yuan(-5));
    }
}

public class TierFilterTests
{
    private static readonly NodeShape Shape = new(8000, 16384);

    private static readonly Pool Pool = new([new Provider("p", "r", "s")],
    [
        new NodeGroup("free", "p", Shape, 1),
        new NodeGroup("od", "p", Shape, 1, 1m, new MarketTerms(Tiers.OnDemand, OfferId: 1)),
        new NodeGroup("res", "p", Shape, 1, 1m, new MarketTerms(Tiers.Reserved, "t1", 2)),
        new NodeGroup("spot", "p", Shape, 1, 1m, new MarketTerms(Tiers.Interruptible, OfferId: 3)),
    ]);

    private static JobSpec Job(string tenant, string? tier) => new(1, tenant, new TaskResources(1000, 64), 1, 0, 60, Tier: tier);

    [Theory]
    [InlineData("t1", null, "free,od")]
    [InlineData("t1", "on-demand", "free,od")]
    [InlineData("t1", "reserved", "res")]
    [InlineData("t2", "reserved", "")]
    [InlineData("t2", "interruptible", "spot")]
    public void EachTier_RunsOnItsOwnCapacity(string tenant, string? tier, string groups)
    {
        var f = new TierFilter();
        var admitted = string.Join(",", Enumerable.Range(0, Pool.Groups.Count).Where(g => f.Admits(Job(tenant, tier), g, Pool)).Select(g => Pool.Groups[g].Id));
        Assert.Equal(groups, admitted);
        for (var g = 0; g < Pool.Groups.Count; g++)
        {
            Assert.Equal(f.Admits(Job(tenant, tier), g, Pool), f.Filter(Job(tenant, tier), g, Pool) is null);
        }

        Assert.Contains("reserved for tenant t1", f.Filter(Job("t2", "reserved"), 2, Pool)!.Value.Reason, StringComparison.Ordinal);
        Assert.Contains("no offer", f.Filter(Job("t2", "interruptible"), 0, Pool)!.Value.Reason, StringComparison.Ordinal);
    }
}
