using Suanli.Core.Domain;
using Suanli.Core.Market;
using Suanli.Core.Scheduling;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>Why a job waits (explain) and what it would cost where (quote), in words built from the core's wait reasons.</summary>
public sealed partial class ControlPlane
{
    /// <summary>Why a job waits (or where it could run), in words.</summary>
    public IReadOnlyList<string> Explain(JobRecord job)
    {
        lock (_gate)
        {
            DrainInboxLocked();
            if (JobStates.IsTerminal(job.State))
            {
                return [$"job is {job.State}" + (job.Reason is null ? "" : $": {job.Reason}")];
            }

            if (job.State is JobStates.Leased or JobStates.Running)
            {
                return [$"job is {job.State} on provider {job.ProviderId} group {job.GroupId} (epoch {job.Epoch})"];
            }

            if (_scheduler is null || _state is null || !_jobs.TryGetValue(job.Id, out var live))
            {
                return ["no provider with capacity has registered yet"];
            }

            if (_holds.TryGetValue(job.Id, out var hold))
            {
                return [hold.Kind switch
                {
                    WaitKind.Dependencies => $"waiting for dependencies: {hold.Detail}",
                    WaitKind.SpotNotAdmitted => SpotWhy(live),
                    _ => $"waiting: {hold.Detail}",
                }];
            }

            if (live.Unfunded is { } funds)
            {
                return [funds.Why];
            }

            WaitReason? reason = _waits.TryGetValue(job.Id, out var w) ? w : null;
            var lines = _scheduler.Explain(live.Spec, _state, reason);
            if (PlacementUsesPrior)
            {
                lines = [.. lines, $"placement {Options.Placement}: fragmentation prior of {_priorInUse.Shapes} task shapes from the last {_priorInUse.Tasks} submitted tasks"];
            }

            if (_scheduler.Policy.Order is FairShareOrder)
            {
                var usage = _fairShare.Usage(live.Spec.Tenant, NowMs / 1000);
                var weight = _tenants.TryGetValue(live.Record.TenantId, out var t) ? t.Weight : 1;
                return [.. lines, FormattableString.Invariant($"queue order fair-share: tenant usage {usage:F1} dominant-share seconds (decayed, half-life {_fairShare.HalfLifeSeconds / 3600} h), weight {weight}; less usage per weight goes first")];
            }

            if (_scheduler.Policy.Order is not SuanliOrder)
            {
                return lines;
            }

            // The suanli order ranks by predicted run time: say what the prediction is and what it rests on.
            var predicted = (long)Math.Round(_predictor.Predict(live.Spec));
            var known = _predictor.Known(live.Spec.Tenant);
            var basis = known == 0 ? "the time limit: this tenant has no finished job yet"
                : known == 1 ? "this tenant's last finished job"
                : $"the mean of this tenant's last {known} finished jobs";
            return [.. lines, $"queue order suanli: predicted run time {predicted} s ({basis}; never above the time limit {live.Spec.RequestedSeconds} s)"];
        }
    }

    /// <summary>
    /// What a job would cost on each node group that may run it now (every filter: hardware, placement constraints,
    /// latency, tier, budget), cheapest first: the price it would lease at, its units per hour on that node shape, the
    /// escrow hold for its time limit, and whether it fits into free capacity at this moment.
    /// </summary>
    public IReadOnlyList<QuoteRow> Quote(JobDocument doc, long tenantId)
    {
        lock (_gate)
        {
            DrainInboxLocked();
            if (_poolDirty || NowMs >= (_partition?.NextChangeMs ?? long.MaxValue))
            {
                RebuildPoolLocked();
            }

            if (_scheduler is null || PoolNow is null || _state is null)
            {
                return [];
            }

            var spec = new JobSpec(-1, tenantId.ToString(System.Globalization.CultureInfo.InvariantCulture), doc.ToTask(), doc.Tasks, NowMs / 1000, doc.TimeLimitSeconds,
                doc.PriorityClass, Constraints: doc.Constraints, Budget: doc.Budget, Tier: doc.Tier);
            var live = new LiveJob(new JobRecord(-1, tenantId, doc.Name, "", JobStates.Queued, 1, 1, doc.PriorityClass, NowMs, null, null, null, null, null, null, null, null), doc, spec);
            var rows = new List<QuoteRow>();
            foreach (var g in _scheduler.FeasibleGroups(spec))
            {
                var group = PoolNow.Groups[g];
                var (localGroup, offer) = _partition!.Sources[g];
                var hold = offer is null ? null : HoldFor(live, group, offer);
                var fitsNow = FitsNowLocked(spec, g, group);
                rows.Add(new QuoteRow(group.ProviderId, localGroup, offer?.Id, offer?.Tier ?? "unpriced", offer?.Unit, hold?.PriceFen ?? 0, hold?.UnitsMilli ?? 0,
                    hold is null ? 0 : Charging.Cost(hold.PriceFen, hold.UnitsMilli, 3_600_000), hold?.HoldFen ?? 0, fitsNow));
            }

            _scheduler.Forget(spec);
            return [.. rows.OrderBy(r => r.EstimatedFen).ThenBy(r => r.Provider, StringComparer.Ordinal).ThenBy(r => r.Group, StringComparer.Ordinal)];
        }
    }

    /// <summary>Whether every task finds free CPU, memory and whole free cards on the group's nodes right now.</summary>
    private bool FitsNowLocked(JobSpec spec, int g, NodeGroup group)
    {
        var t = spec.Task;
        long fit = 0;
        for (var n = 0; n < group.NodeCount && fit < spec.Tasks; n++)
        {
            var v = _state!.Node(g, n);
            var byCpu = t.MilliCpu > 0 ? v.FreeMilliCpu / t.MilliCpu : long.MaxValue;
            var byMem = t.MemoryMiB > 0 ? v.FreeMemoryMiB / t.MemoryMiB : long.MaxValue;
            var freeCards = 0;
            foreach (var milli in v.FreeGpu)
            {
                freeCards += milli >= Math.Max(1, t.GpuMilli) ? 1 : 0;
            }

            var byGpu = t.GpuCount > 0 ? freeCards / t.GpuCount : long.MaxValue;
            fit += Math.Min(byCpu, Math.Min(byMem, byGpu));
        }

        return fit >= spec.Tasks;
    }
}
