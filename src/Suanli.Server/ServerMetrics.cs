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

    public void Heartbeat(long provider) => _heartbeats.WithLabels(provider.ToString(System.Globalization.CultureInfo.InvariantCulture)).Inc();
}
