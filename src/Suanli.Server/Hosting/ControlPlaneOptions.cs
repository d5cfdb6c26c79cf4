using Suanli.Core.Scheduling;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>Settings of the control plane.</summary>
public sealed record ControlPlaneOptions
{
    /// <summary>A provider whose heartbeat is older than this is marked lost and its jobs go back under their retry policy. Default: 30 s (1 s to 1 h).</summary>
    public TimeSpan LostAfter { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long a provider's agent keeps running its jobs while the control plane's address refuses connections (the
    /// control plane restarting): told to agents at registration, and a lost provider's jobs its agent may be running
    /// are requeued only after <see cref="LostAfter"/> plus this, so a job never runs twice. Zero: agents self-fence
    /// after the lease as soon as they cannot renew it, and failover is fastest. Default: 0 (0 to 1 day).
    /// </summary>
    public TimeSpan AgentOutageGrace { get; init; }

    /// <summary>Longest pause between scheduling cycles (a submission or completion wakes the loop at once). Default: 500 ms (1 ms to 1 min).</summary>
    public TimeSpan CycleInterval { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Most output one attempt stores (UTF-8 bytes); past it the log ends with a truncation line. Default: 64 MiB (1 MiB to 1 TiB).</summary>
    public long LogCapBytes { get; init; } = LogLimits.DefaultCapBytes;

    /// <summary>How long the output of a finished job is kept; null keeps it. Default: null (else 1.5 min to 100 years).</summary>
    public TimeSpan? LogRetention { get; init; }

    /// <summary>Queue order (a name from the policy registry). Default: fair-share.</summary>
    public string Policy { get; init; } = "fair-share";

    /// <summary>Placement (node-group and node scoring): bestfit, spread, price, latency, heterogeneity, … Default: bestfit.</summary>
    public string Placement { get; init; } = "bestfit";

    /// <summary>Network latency between regions in milliseconds (symmetric), for latency bounds and latency placement.</summary>
    public IReadOnlyList<(string From, string To, int Ms)> Latency { get; init; } = [];

    /// <summary>
    /// Reads a latency file: one "FROM TO MS" per line (symmetric; '#' starts a comment). Errors name the line and
    /// the rule.
    /// </summary>
    public static IReadOnlyList<(string From, string To, int Ms)> ReadLatency(string path)
    {
        var result = new List<(string, string, int)>();
        var n = 0;
        foreach (var raw in File.ReadLines(path))
        {
            n++;
            var line = raw.Split('#')[0].Trim();
            if (line.Length == 0)
            {
                continue;
            }

            var p = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (p.Length != 3 || !int.TryParse(p[2], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var ms) || ms > 100_000)
            {
                throw new ArgumentException($"--latency: line {n}: expected \"FROM TO MS\" with MS a whole number from 0 to 100000, got \"{line}\"");
            }

            result.Add((p[0], p[1], ms));
        }

        return result;
    }

    public BackfillMode Backfill { get; init; } = BackfillMode.Easy;

    /// <summary>
    /// Priority preemption (the core's): a job of a higher priority class that cannot start otherwise stops running jobs
    /// of lower classes of the same tenant (never another tenant's); they get the spot notice (signal and notice file), are requeued with their attempt given back,
    /// and the job starts once they have stopped.
    /// </summary>
    public bool Preemption { get; init; }

    /// <summary>The platform's fee on every settlement, in basis points of the provider's price (500 = 5%). Default: 500 (0 to 9999).</summary>
    public int FeeBps { get; init; } = 500;

    /// <summary>How long a spot job is warned (signal and notice file) before it is preempted. Default: 2 min (0 to 1 day).</summary>
    public TimeSpan SpotNotice { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>Interval of the spot market's call auction. Default: 1 min (1 s to 1 day).</summary>
    public TimeSpan AuctionInterval { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>
    /// Every setting that is out of its range, each naming the option (empty when all are valid). The host refuses to
    /// start with any (<see cref="ServerHost.BuildAsync"/>), whoever built the options.
    /// </summary>
    public IReadOnlyList<string> Problems()
    {
        var problems = new List<string>();
        void Range(bool ok, string what)
        {
            if (!ok)
            {
                problems.Add(what);
            }
        }

        Range(LostAfter >= TimeSpan.FromSeconds(1) && LostAfter <= TimeSpan.FromHours(1), "lost-after: must be from 1 to 3600 seconds");
        Range(AgentOutageGrace >= TimeSpan.Zero && AgentOutageGrace <= TimeSpan.FromDays(1), "agent-outage-grace: must be from 0 to 86400 seconds");
        Range(CycleInterval >= TimeSpan.FromMilliseconds(1) && CycleInterval <= TimeSpan.FromMinutes(1), "cycle-interval: must be from 1 ms to 1 minute");
        Range(LogCapBytes is >= 1 << 20 and <= 1L << 40, "log-cap-mib: must be from 1 to 1048576");
        Range(LogRetention is null || (LogRetention >= TimeSpan.FromDays(0.001) && LogRetention <= TimeSpan.FromDays(36500)), "log-retention-days: must be from 0.001 to 36500");
        Range(PolicyRegistry.PolicyNames.Contains(Policy), $"policy: choose one of {string.Join(", ", PolicyRegistry.PolicyNames)}");
        Range(PolicyRegistry.PlacementNames.Contains(Placement), $"placement: choose one of {string.Join(", ", PolicyRegistry.PlacementNames)}");
        Range(FeeBps is >= 0 and < 10_000, "fee: must be a fraction from 0 to below 1 (basis points 0 to 9999)");
        Range(SpotNotice >= TimeSpan.Zero && SpotNotice <= TimeSpan.FromDays(1), "spot-notice: must be from 0 to 86400 seconds");
        Range(AuctionInterval >= TimeSpan.FromSeconds(1) && AuctionInterval <= TimeSpan.FromDays(1), "auction-interval: must be from 1 to 86400 seconds");
        return problems;
    }
}
