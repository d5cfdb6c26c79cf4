using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>
/// Decayed usage per tenant, in dominant-share seconds (the job's largest share of the pool's CPU or cards × seconds),
/// halving every <see cref="HalfLifeSeconds"/>. Pure bookkeeping: the owner charges finished work and asks for usage.
/// </summary>
public sealed class FairShareLedger(long halfLifeSeconds = 7 * 24 * 3600)
{
    private readonly Dictionary<string, (double Usage, long At)> _usage = new(StringComparer.Ordinal);

    /// <summary>Half-life of usage in seconds. Default: one week (Slurm's PriorityDecayHalfLife default is 7 days).</summary>
    public long HalfLifeSeconds { get; } = halfLifeSeconds;

    /// <summary>Adds <paramref name="amount"/> dominant-share seconds to a tenant at time <paramref name="at"/>.</summary>
    public void Charge(string tenant, double amount, long at)
    {
        if (_usage.TryGetValue(tenant, out var u) && at < u.At)
        {
            // A charge older than the last one (history replayed after a restart): decay it to the newer time.
            _usage[tenant] = (u.Usage + (amount * Math.Pow(0.5, (u.At - at) / (double)HalfLifeSeconds)), u.At);
            return;
        }

        _usage[tenant] = (Usage(tenant, at) + amount, at);
    }

    /// <summary>Decayed usage of a tenant at time <paramref name="now"/>.</summary>
    public double Usage(string tenant, long now)
    {
        if (!_usage.TryGetValue(tenant, out var u))
        {
            return 0;
        }

        var dt = Math.Max(0, now - u.At);
        return u.Usage * Math.Pow(0.5, dt / (double)HalfLifeSeconds);
    }

    /// <summary>Tenants with recorded usage.</summary>
    public IEnumerable<string> Tenants => _usage.Keys;

    /// <summary>The job's dominant share of the pool: max of its CPU share and its card share.</summary>
    public static double DominantShare(JobSpec job, double poolMilliCpu, double poolGpuMilli)
    {
        var cpu = poolMilliCpu > 0 ? job.Task.MilliCpu * (double)job.Tasks / poolMilliCpu : 0;
        var gpu = poolGpuMilli > 0 ? job.Task.TotalGpuMilliOrWhole() * (double)job.Tasks / poolGpuMilli : 0;
        return Math.Max(cpu, gpu);
    }
}
