using Suanli.Core.Market;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>
/// The spot market: a periodic call auction (McAfee trade reduction, <see cref="CallMarket"/>) per instrument
/// ("card-hour:MODEL" or "core-hour:cpu"). Asks are the live interruptible offers (their capacity in lots at their
/// posted price as reserve); bids are the interruptible jobs, queued and running, each for its lots at its maxPrice.
/// Only a job whose lots all cleared may start; a running job that no longer clears (outbid, or its capacity withdrawn)
/// gets a notice and is preempted and requeued when the notice ends.
/// </summary>
public sealed partial class ControlPlane
{
    private HashSet<long> _spotWinners = [];
    private readonly Dictionary<string, (long Buyer, long Seller)> _spotPrices = new(StringComparer.Ordinal);
    private readonly HashSet<string> _spotCleared = new(StringComparer.Ordinal);
    private long _nextAuctionMs;

    private static bool IsSpot(LiveJob j) => j.Doc.Tier == Tiers.Interruptible;

    private bool HasSpotMarket()
    {
        lock (_gate)
        {
            DrainInboxLocked();
            return _offers.Values.Any(o => o.Tier == Tiers.Interruptible && o.WithdrawnMs is null) || _jobs.Values.Any(IsSpot);
        }
    }

    /// <summary>The job's environment; a spot job also learns its tier and how much notice it gets before preemption.</summary>
    private IReadOnlyDictionary<string, string> LeaseEnv(LiveJob j) => !IsSpot(j) ? j.Doc.Env : new Dictionary<string, string>(j.Doc.Env, StringComparer.Ordinal)
    {
        ["SUANLI_TIER"] = Tiers.Interruptible,
        ["SUANLI_PREEMPT_NOTICE_SECONDS"] = ((int)Options.SpotNotice.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    private string SpotWhy(LiveJob j)
    {
        var instrument = InstrumentOf(j, AskLotsLocked());
        return _spotCleared.Contains(instrument)
            ? $"outbid in the spot auction for {instrument}: the last round cleared at {Money.Yuan(_spotPrices.GetValueOrDefault(instrument).Buyer)} per lot; the job bids {Money.Yuan(j.Doc.MaxPriceFen ?? 0)}"
            : $"waiting for the next spot auction round for {instrument} (every {Options.AuctionInterval.TotalSeconds:0} s)";
    }

    /// <summary>The price the pool shows for an offer's capacity: an interruptible offer's last clearing price, else its posted price.</summary>
    private long SpotPrice(OfferRecord o) => SpotPrices(o).Buyer;

    private (long Buyer, long Seller) SpotPrices(OfferRecord o) =>
        o.Tier == Tiers.Interruptible && InstrumentOf(o) is { } i && _spotPrices.TryGetValue(i, out var p) ? p : (o.PriceFen, o.PriceFen);

    private string? InstrumentOf(OfferRecord o)
    {
        if (o.Unit == PriceUnits.CoreHour)
        {
            return "core-hour:cpu";
        }

        var model = _providers.TryGetValue(o.ProviderId, out var p) ? p.Record.Groups.FirstOrDefault(g => g.Id == o.GroupId)?.Accelerator : null;
        return o.Unit == PriceUnits.CardHour && model is not null ? $"card-hour:{model}" : null;
    }

    /// <summary>Lots of each instrument the live interruptible offers sell.</summary>
    private Dictionary<string, long> AskLotsLocked()
    {
        var now = NowMs;
        var lots = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var o in _offers.Values.Where(o => o.Tier == Tiers.Interruptible && o.LiveAt(now)))
        {
            if (InstrumentOf(o) is { } i && AskLots(o) is > 0 and var n)
            {
                lots[i] = lots.GetValueOrDefault(i) + n;
            }
        }

        return lots;
    }

    private long AskLots(OfferRecord o)
    {
        if (!_providers.TryGetValue(o.ProviderId, out var p) || p.Record.Groups.FirstOrDefault(g => g.Id == o.GroupId) is not { } g)
        {
            return 0;
        }

        return o.Unit == PriceUnits.CoreHour ? o.Nodes * (g.MilliCpu / 1000) : (long)o.Nodes * g.Accelerators;
    }

    /// <summary>The instrument a spot job bids in: cards of an accepted model (the deepest market of those), else cores.</summary>
    private static string InstrumentOf(LiveJob j, Dictionary<string, long> askLots)
    {
        if (j.Spec.Task.GpuCount == 0)
        {
            return "core-hour:cpu";
        }

        var models = j.Spec.Task.Models;
        var best = askLots.Where(a => a.Key.StartsWith("card-hour:", StringComparison.Ordinal)
                && (models.Count == 0 || models.Contains(a.Key[10..], StringComparer.OrdinalIgnoreCase)))
            .OrderByDescending(a => a.Value).ThenBy(a => a.Key, StringComparer.Ordinal).Select(a => a.Key).FirstOrDefault();
        return best ?? $"card-hour:{(models.Count > 0 ? models[0] : "any")}";
    }

    private static long BidLots(LiveJob j) => j.Spec.Task.GpuCount == 0
        ? (j.Spec.Task.MilliCpu * j.Spec.Tasks + 999) / 1000
        : ((long)j.Spec.Task.GpuCount * Math.Max(1, j.Spec.Task.GpuMilli) * j.Spec.Tasks + 999) / 1000;

    /// <summary>
    /// Runs one round of the spot auction for every instrument with asks or bids, publishes the clearing, admits the
    /// winners and puts running losers on notice.
    /// </summary>
    public async Task<IReadOnlyList<RoundRecord>> ClearSpotMarketAsync()
    {
        var now = NowMs;
        var rounds = new List<RoundRecord>();
        var unstarted = new List<LiveJob>();
        lock (_gate)
        {
            DrainInboxLocked();
            _nextAuctionMs = now + (long)Options.AuctionInterval.TotalMilliseconds;
            var askLots = AskLotsLocked();
            var asks = new Dictionary<string, List<Order>>(StringComparer.Ordinal);
            foreach (var o in _offers.Values.Where(o => o.Tier == Tiers.Interruptible && o.LiveAt(now)).OrderBy(o => o.Id))
            {
                if (InstrumentOf(o) is { } i && AskLots(o) is > 0 and var n)
                {
                    (asks.TryGetValue(i, out var l) ? l : asks[i] = []).Add(new Order(o.Id, o.ProviderId, n, o.PriceFen, o.Id));
                }
            }

            var bids = new Dictionary<string, List<Order>>(StringComparer.Ordinal);
            var spot = _jobs.Values.Where(j => IsSpot(j) && j.Preempting is null && j.Record.State is JobStates.Queued or JobStates.Leased or JobStates.Running).ToList();
            foreach (var j in spot.OrderBy(j => j.Record.Id))
            {
                var i = InstrumentOf(j, askLots);
                (bids.TryGetValue(i, out var l) ? l : bids[i] = []).Add(new Order(j.Record.Id, j.Record.TenantId, BidLots(j), j.Doc.MaxPriceFen ?? 0, j.Record.Id));
            }

            var winners = new HashSet<long>();
            foreach (var instrument in asks.Keys.Union(bids.Keys).Order(StringComparer.Ordinal))
            {
                var b = bids.GetValueOrDefault(instrument) ?? [];
                var a = asks.GetValueOrDefault(instrument) ?? [];
                var c = CallMarket.Clear(b, a);
                var lots = b.ToDictionary(o => o.Id, o => o.Lots);
                foreach (var f in c.BidFills.Where(f => f.Lots == lots[f.OrderId]))
                {
                    winners.Add(f.OrderId);
                }

                if (c.Volume > 0)
                {
                    _spotPrices[instrument] = (c.BuyerPriceFen, c.SellerPriceFen);
                }

                _spotCleared.Add(instrument);
                _metrics.SpotRound(instrument, c.Volume, c.BuyerPriceFen, c.SellerPriceFen);
                rounds.Add(new RoundRecord(0, instrument, now, b.Count, a.Count, b.Sum(o => o.Lots), a.Sum(o => o.Lots), c.Volume, c.EfficientVolume,
                    c.BuyerPriceFen, c.SellerPriceFen, c.Reduced));
            }

            _spotWinners = winners;
            var deadline = now + (long)Options.SpotNotice.TotalMilliseconds;
            // A loser no agent has yet goes straight back (marked, so no lease poll hands it out meanwhile); one an agent
            // may have started (its running report may still be on the way) gets the notice as a running one does.
            foreach (var j in spot.Where(j => j.Record.State == JobStates.Leased && !j.HandedOut && !winners.Contains(j.Record.Id)))
            {
                j.Preempting = (now, "outbid in the spot auction");
                unstarted.Add(j);
            }

            foreach (var j in spot.Where(j => (j.Record.State == JobStates.Running || (j.Record.State == JobStates.Leased && j.HandedOut)) && !winners.Contains(j.Record.Id)))
            {
                var i = InstrumentOf(j, askLots);
                _metrics.Preempted();
                j.Preempting = (deadline, askLots.ContainsKey(i)
                    ? $"outbid in the spot auction for {i} (cleared at {Money.Yuan(_spotPrices.GetValueOrDefault(i).Buyer)}, the job bids {Money.Yuan(j.Doc.MaxPriceFen ?? 0)})"
                    : $"the interruptible capacity for {i} was reclaimed");
                if (_providers.TryGetValue(j.Record.ProviderId ?? -1, out var p))
                {
                    p.Wake.TrySetResult();
                }
            }

            _poolDirty = true;
        }

        // A loser that was leased but has not started yet goes straight back to the queue (nothing ran, nothing is charged).
        foreach (var j in unstarted)
        {
            await RequeueUnstartedAsync(j, "outbid in the spot auction", now);
        }

        var recorded = new List<RoundRecord>(rounds.Count);
        foreach (var r in rounds)
        {
            recorded.Add(await _ledger.RecordRoundAsync(r));
        }

        Wake();
        return recorded;
    }

    /// <summary>The order book: standing bids (spot jobs) and asks (interruptible offers) by instrument and price level.</summary>
    public IReadOnlyList<BookView> OrderBook()
    {
        lock (_gate)
        {
            DrainInboxLocked();
            var now = NowMs;
            var askLots = AskLotsLocked();
            var asks = _offers.Values.Where(o => o.Tier == Tiers.Interruptible && o.LiveAt(now) && InstrumentOf(o) is not null)
                .Select(o => (Instrument: InstrumentOf(o)!, Price: o.PriceFen, Lots: AskLots(o))).Where(a => a.Lots > 0).ToList();
            var bids = _jobs.Values.Where(j => IsSpot(j) && j.Preempting is null && !JobStates.IsTerminal(j.Record.State))
                .Select(j => (Instrument: InstrumentOf(j, askLots), Price: j.Doc.MaxPriceFen ?? 0, Lots: BidLots(j))).ToList();
            static List<BookLevel> Levels(IEnumerable<(string Instrument, long Price, long Lots)> side, bool descending)
            {
                var levels = side.GroupBy(x => x.Price).Select(g => new BookLevel(g.Key, g.Sum(x => x.Lots), g.Count()));
                return [.. descending ? levels.OrderByDescending(l => l.PriceFen) : levels.OrderBy(l => l.PriceFen)];
            }

            return [.. asks.Select(a => a.Instrument).Union(bids.Select(b => b.Instrument)).Union(_spotPrices.Keys).Order(StringComparer.Ordinal).Select(i =>
                new BookView(i, Levels(bids.Where(b => b.Instrument == i), true), Levels(asks.Where(a => a.Instrument == i), false),
                    _spotPrices.TryGetValue(i, out var p) ? p.Buyer : null, _spotPrices.TryGetValue(i, out var q) ? q.Seller : null))];
        }
    }

    /// <summary>Notices for the provider's spot jobs on notice, and those whose notice ran out (to stop now).</summary>
    private (List<PreemptNotice> Notices, List<long> Due) PreemptionsLocked(long providerId, long now)
    {
        var notices = new List<PreemptNotice>();
        var due = new List<long>();
        foreach (var j in _jobs.Values.Where(j => j.Preempting is not null && j.Record.ProviderId == providerId && j.Record.State is JobStates.Leased or JobStates.Running))
        {
            var (deadline, why) = j.Preempting!.Value;
            if (now >= deadline)
            {
                due.Add(j.Record.Id);
            }
            else
            {
                notices.Add(new PreemptNotice(j.Record.Id, (int)Math.Ceiling((deadline - now) / 1000.0), why));
            }
        }

        return (notices, due);
    }
}

/// <summary>One price level of the order book: lots and orders at a price (fen per lot).</summary>
public sealed record BookLevel(long PriceFen, long Lots, int Orders);

/// <summary>The spot order book of one instrument and its last clearing prices.</summary>
public sealed record BookView(string Instrument, IReadOnlyList<BookLevel> Bids, IReadOnlyList<BookLevel> Asks, long? LastBuyerPriceFen, long? LastSellerPriceFen);

/// <summary>One place a job could run and what it would cost there (fen; units ×1000 per hour).</summary>
public sealed record QuoteRow(string Provider, string Group, long? OfferId, string Tier, string? Unit, long PriceFen, long UnitsMilli, long HourlyFen, long EstimatedFen, bool FitsNow);
