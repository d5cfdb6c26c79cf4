using Prometheus;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>
/// The control plane's Prometheus metrics (prometheus-net: the de-facto .NET client, text exposition format, no
/// collector process needed). Each server instance has its own registry so tests can run several in one process.
/// </summary>
public sealed class ServerMetrics
{
    private readonly Gauge _queue;
    private readonly Gauge _jobs;
    private readonly Histogram _cycle;
    private readonly Counter _leases;
    private readonly Counter _heartbeats;
    private readonly Counter _submissions;
    private readonly Gauge _spotPrice;
    private readonly Counter _spotLots;
    private readonly Counter _spotRounds;
    private readonly Counter _holds;
    private readonly Counter _unfunded;
    private readonly Counter _preemptions;
    private readonly Dictionary<string, long> _counts = [];
    private readonly Lock _gate = new();

    public ServerMetrics()
    {
        Registry = Metrics.NewCustomRegistry();
        var f = Metrics.WithCustomRegistry(Registry);
        _queue = f.CreateGauge("suanli_queue_depth", "Jobs queued and not yet placed.");
        _jobs = f.CreateGauge("suanli_jobs", "Jobs by state.", "state");
        _cycle = f.CreateHistogram("suanli_cycle_duration_seconds", "Scheduling cycle duration (decide and make leases durable).",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0005, 2, 16) });
        _leases = f.CreateCounter("suanli_leases_total", "Leases granted to provider agents.");
        _heartbeats = f.CreateCounter("suanli_agent_heartbeats_total", "Agent heartbeats accepted.", "provider");
        _submissions = f.CreateCounter("suanli_submissions_total", "Acknowledged job submissions.");
        _spotPrice = f.CreateGauge("suanli_spot_clearing_price_fen", "Last clearing price of the spot auction per lot (buyer pays, seller receives).", "instrument", "side");
        _spotLots = f.CreateCounter("suanli_spot_lots_cleared_total", "Lots traded in the spot auction.", "instrument");
        _spotRounds = f.CreateCounter("suanli_spot_rounds_total", "Spot auction clearings (one per instrument per round).");
        _holds = f.CreateCounter("suanli_escrow_holds_total", "Leases of priced capacity, each with its escrow hold.", "tier");
        _unfunded = f.CreateCounter("suanli_leases_unfunded_total", "Leases refused because the wallet could not cover the hold.");
        _preemptions = f.CreateCounter("suanli_spot_preemptions_total", "Spot jobs put on notice (outbid or capacity reclaimed).");
        foreach (var s in JobStates.All)
        {
            _jobs.WithLabels(s).Set(0);
        }
    }

    /// <summary>The registry /metrics serves.</summary>
    public CollectorRegistry Registry { get; }

    public void SetStateCounts(IReadOnlyDictionary<string, long> counts)
    {
        lock (_gate)
        {
            foreach (var (k, v) in counts)
            {
                _counts[k] = v;
                _jobs.WithLabels(k).Set(v);
            }
        }
    }

    /// <summary>Records a job moving from <paramref name="from"/> (null: a new job) to <paramref name="to"/>.</summary>
    public void Transition(string? from, string to)
    {
        if (from == to)
        {
            return;
        }

        lock (_gate)
        {
            if (from is not null)
            {
                _counts[from] = _counts.GetValueOrDefault(from) - 1;
                _jobs.WithLabels(from).Set(_counts[from]);
            }
            else
            {
                _submissions.Inc();
            }

            _counts[to] = _counts.GetValueOrDefault(to) + 1;
            _jobs.WithLabels(to).Set(_counts[to]);
        }
    }

    public void QueueDepth(int n) => _queue.Set(n);

    public void Cycle(double seconds, int leases)
    {
        _cycle.Observe(seconds);
        _leases.Inc(leases);
    }

    /// <summary>A spot auction clearing of one instrument.</summary>
    public void SpotRound(string instrument, long volume, long buyerFen, long sellerFen)
    {
        _spotRounds.Inc();
        if (volume > 0)
        {
            _spotLots.WithLabels(instrument).Inc(volume);
            _spotPrice.WithLabels(instrument, "buyer").Set(buyerFen);
            _spotPrice.WithLabels(instrument, "seller").Set(sellerFen);
        }
    }

    public void Hold(string tier) => _holds.WithLabels(tier).Inc();

    public void Unfunded() => _unfunded.Inc();

    public void Preempted() => _preemptions.Inc();

    public void Heartbeat(long provider) => _heartbeats.WithLabels(provider.ToString(System.Globalization.CultureInfo.InvariantCulture)).Inc();
}
