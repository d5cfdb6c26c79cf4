namespace Suanli.Core.Market;

/// <summary>
/// One order of a call market: <see cref="Lots"/> standard lots at a limit price per lot in fen (a bid's maximum, an
/// ask's minimum). <see cref="Seq"/> is the arrival order, used to break price ties (earlier first).
/// </summary>
public readonly record struct Order(long Id, long Owner, long Lots, long LimitFen, long Seq);

/// <summary>How many lots of one order trade.</summary>
public readonly record struct Fill(long OrderId, long Owner, long Lots);

/// <summary>
/// The outcome of one clearing. Buyers pay <see cref="BuyerPriceFen"/> per lot and sellers receive
/// <see cref="SellerPriceFen"/>; they differ only after a trade reduction, and the difference × volume is the market's
/// surplus (never a deficit: the rule is budget-balanced). <see cref="EfficientVolume"/> is the number of lots the
/// efficient (welfare-maximising) allocation would trade; <see cref="Volume"/> is at least that minus one.
/// </summary>
public sealed record Clearing(
    long Volume,
    long EfficientVolume,
    long BuyerPriceFen,
    long SellerPriceFen,
    bool Reduced,
    IReadOnlyList<Fill> BidFills,
    IReadOnlyList<Fill> AskFills)
{
    /// <summary>What the market keeps: (buyer price − seller price) × volume, ≥ 0.</summary>
    public long SurplusFen => (BuyerPriceFen - SellerPriceFen) * Volume;

    public static Clearing Empty { get; } = new(0, 0, 0, 0, false, [], []);
}

/// <summary>
/// A sealed-bid call market cleared with McAfee's trade-reduction rule (R. P. McAfee, "A dominant strategy double
/// auction", J. Economic Theory 56, 1992), applied per lot: each lot of an order is one unit trader.
/// <para>
/// Bids are sorted by price descending and asks ascending (ties: earlier <see cref="Order.Seq"/>, then id). Let k be the
/// largest number of lots with the k-th bid lot b_k ≥ the k-th ask lot a_k. The candidate price p0 is set by the first
/// losing lots only: the midpoint of b_{k+1} and a_{k+1} when both exist, else whichever exists. When a_k ≤ p0 ≤ b_k all
/// k lots trade at p0; otherwise (or when no lot loses on either side) the k-th pair is dropped and k−1 lots trade,
/// buyers paying b_k and sellers receiving a_k. Because no winning order's own price sets the price it trades at, and
/// the dropped pair is the marginal one, reporting the true value is a dominant strategy for unit traders; the market
/// never pays out more than it takes in. Orders with several lots are not strategy-proof in general (demand reduction),
/// as for every multi-unit double auction with this rule.
/// </para>
/// O(n log n) in the number of orders; lots are never expanded.
/// </summary>
public static class CallMarket
{
    /// <summary>Price priority (descending for bids, ascending for asks), then time (earlier first), then id.</summary>
    private sealed class Priority(bool descending) : IComparer<Order>
    {
        public static readonly Priority Bids = new(true);
        public static readonly Priority Asks = new(false);

        public int Compare(Order x, Order y)
        {
            var c = descending ? y.LimitFen.CompareTo(x.LimitFen) : x.LimitFen.CompareTo(y.LimitFen);
            if (c == 0)
            {
                c = x.Seq.CompareTo(y.Seq);
            }

            return c != 0 ? c : x.Id.CompareTo(y.Id);
        }
    }

    /// <summary>Clears <paramref name="bids"/> against <paramref name="asks"/>. Orders must have positive lots and a non-negative price.</summary>
    public static Clearing Clear(IReadOnlyList<Order> bids, IReadOnlyList<Order> asks)
    {
        ArgumentNullException.ThrowIfNull(bids);
        ArgumentNullException.ThrowIfNull(asks);
        var b = Sorted(bids, Priority.Bids, nameof(bids));
        var a = Sorted(asks, Priority.Asks, nameof(asks));

        // Walk both sides lot-wise (segment by segment) to the last crossing lot.
        int i = 0, j = 0;
        long leftB = b.Length > 0 ? b[0].Lots : 0, leftA = a.Length > 0 ? a[0].Lots : 0, k = 0, bk = 0, ak = 0;
        while (i < b.Length && j < a.Length && b[i].LimitFen >= a[j].LimitFen)
        {
            var t = Math.Min(leftB, leftA);
            k += t;
            bk = b[i].LimitFen;
            ak = a[j].LimitFen;
            leftB -= t;
            leftA -= t;
            if (leftB == 0 && ++i < b.Length)
            {
                leftB = b[i].Lots;
            }

            if (leftA == 0 && ++j < a.Length)
            {
                leftA = a[j].Lots;
            }
        }

        if (k == 0)
        {
            return Clearing.Empty;
        }

        // The (k+1)-th lots: where the walk stopped (each side's next lot, if any).
        long? nextBid = i < b.Length ? b[i].LimitFen : null;
        long? nextAsk = j < a.Length ? a[j].LimitFen : null;
        long? p0 = nextBid is { } nb && nextAsk is { } na ? (nb + na) / 2 : nextBid ?? nextAsk;
        if (p0 is { } p && ak <= p && p <= bk)
        {
            return new Clearing(k, k, p, p, false, Fills(b, k), Fills(a, k));
        }

        return new Clearing(k - 1, k, k > 1 ? bk : 0, k > 1 ? ak : 0, true, Fills(b, k - 1), Fills(a, k - 1));
    }

    private static Order[] Sorted(IReadOnlyList<Order> orders, IComparer<Order> by, string name)
    {
        var arr = new Order[orders.Count];
        for (var n = 0; n < arr.Length; n++)
        {
            var o = orders[n];
            if (o.Lots <= 0 || o.LimitFen < 0)
            {
                throw new ArgumentException($"{name}[{n}]: lots must be positive and the price non-negative (order {o.Id}: {o.Lots} lots at {o.LimitFen} fen)", name);
            }

            arr[n] = o;
        }

        Array.Sort(arr, by);
        return arr;
    }

    private static List<Fill> Fills(Order[] sorted, long volume)
    {
        var fills = new List<Fill>();
        for (var n = 0; n < sorted.Length && volume > 0; n++)
        {
            var q = Math.Min(volume, sorted[n].Lots);
            fills.Add(new Fill(sorted[n].Id, sorted[n].Owner, q));
            volume -= q;
        }

        return fills;
    }
}
