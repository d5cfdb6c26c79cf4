using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>
/// Online run-time prediction from the submitter's history (Tsafrir, Etsion and Feitelson, "Backfilling using
/// system-generated predictions rather than user runtime estimates", IEEE TPDS 2007): the mean of the tenant's last
/// two actual run times, never above the job's own request; the request itself while the tenant has no finished job
/// or is <see cref="Tenant.Unknown"/> (no history to pool). It reads only jobs that have ended, so it is online.
/// Fed by <see cref="Completed"/>.
/// </summary>
public sealed class RunTimePredictor
{
    private readonly Dictionary<string, (long Last, long Before, int Count)> _history = new(StringComparer.Ordinal);

    /// <summary>How many of a tenant's finished jobs the prediction reads (the last two).</summary>
    public const int HistoryDepth = 2;

    /// <summary>Records a finished job's actual run time.</summary>
    public void Completed(JobSpec job, long runSeconds)
    {
        if (job.Tenant == Tenant.Unknown)
        {
            return;
        }

        var h = _history.GetValueOrDefault(job.Tenant);
        _history[job.Tenant] = (Math.Max(0, runSeconds), h.Last, Math.Min(HistoryDepth, h.Count + 1));
    }

    /// <summary>How many finished jobs of the tenant the prediction rests on (0 to <see cref="HistoryDepth"/>).</summary>
    public int Known(string tenant) => _history.TryGetValue(tenant, out var h) ? h.Count : 0;

    /// <summary>Predicted run time in seconds (at least 1).</summary>
    public double Predict(JobSpec job)
    {
        var request = Math.Max(1, job.RequestedSeconds);
        if (!_history.TryGetValue(job.Tenant, out var h))
        {
            return request;
        }

        var mean = h.Count >= 2 ? (h.Last + h.Before) / 2.0 : h.Last;
        return Math.Clamp(mean, 1, request);
    }

    /// <summary>Forgets everything.</summary>
    public void Clear() => _history.Clear();
}
