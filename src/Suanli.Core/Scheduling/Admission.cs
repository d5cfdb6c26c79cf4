using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>What the platform knows of a job another job depends on.</summary>
public enum JobFate
{
    /// <summary>No such job (never submitted, or outside the replayed trace).</summary>
    Missing,

    /// <summary>Queued, leased or running: it has not ended yet.</summary>
    Pending,

    /// <summary>Ended successfully.</summary>
    Succeeded,

    /// <summary>Ended unsuccessfully: failed, cancelled or lost.</summary>
    Unsuccessful,
}

/// <summary>
/// Everything admission reads besides the queue. <see cref="Fate"/> answers for every job a queued job depends on;
/// <see cref="ActiveArrayElements"/> counts, per array, the elements that hold resources (leased or running);
/// <see cref="SpotAdmitted"/> is the set of interruptible-tier jobs the last auction rounds admitted (null: the caller
/// runs no auction, so interruptible jobs are not gated).
/// </summary>
public sealed record AdmissionInput(
    Func<long, JobFate> Fate,
    IReadOnlyDictionary<long, int>? ActiveArrayElements = null,
    IReadOnlySet<long>? SpotAdmitted = null);

/// <summary>A job admission keeps out of this cycle, and why (in words, for explain).</summary>
public readonly record struct Hold(WaitKind Kind, string Detail);

/// <summary>The outcome of admission: the jobs the cycle may consider, those held back, those that can never run.</summary>
public sealed class AdmissionResult
{
    /// <summary>Jobs the scheduling cycle may start.</summary>
    public List<JobSpec> Admitted { get; } = [];

    /// <summary>Jobs kept out of this cycle, by id.</summary>
    public Dictionary<long, Hold> Held { get; } = [];

    /// <summary>
    /// Jobs whose dependencies can never hold (afterok on a job that failed, afternotok on one that succeeded, a
    /// dependency on a job that does not exist): the caller cancels them with the reason, as Slurm does with
    /// DependencyNeverSatisfied.
    /// </summary>
    public List<(JobSpec Job, string Reason)> Doomed { get; } = [];
}

/// <summary>
/// Admission: the scheduling rules that decide whether a queued job may be considered at all, before placement —
/// dependencies, array throttling and spot admission. Pure: the live control plane and the simulator call it with the
/// same queue and get the same answer. (Funds are checked during placement, by <see cref="CycleInput.Funds"/>, because
/// what a job holds depends on where it is placed.)
/// </summary>
public static class Admission
{
    /// <summary>
    /// Admits, holds or dooms every queued job. Jobs are taken in id order when any is an array element (the throttle
    /// offers the lowest ids first), else in the order given; <see cref="AdmissionResult.Admitted"/> keeps that order.
    /// </summary>
    public static AdmissionResult Admit(IEnumerable<JobSpec> queued, AdmissionInput input)
    {
        var result = new AdmissionResult();
        Dictionary<long, int>? offered = null;
        var jobs = queued as IReadOnlyCollection<JobSpec> ?? [.. queued];
        IEnumerable<JobSpec> order = jobs.Any(j => j.Array is not null) ? jobs.OrderBy(j => j.Id) : jobs;
        foreach (var job in order)
        {
            if (job.After.Count > 0 && !DependenciesHold(job, input, result))
            {
                continue;
            }

            if (input.SpotAdmitted is { } winners && string.Equals(job.Tier, Market.Tiers.Interruptible, StringComparison.Ordinal) && !winners.Contains(job.Id))
            {
                result.Held[job.Id] = new Hold(WaitKind.SpotNotAdmitted, "not admitted by the last spot auction round");
                continue;
            }

            if (job.Array is { } array)
            {
                // Of an array's queued elements only as many are offered as its limit leaves after the elements that
                // hold resources, lowest ids first.
                offered ??= [];
                var used = (input.ActiveArrayElements?.GetValueOrDefault(array.ArrayId) ?? 0) + offered.GetValueOrDefault(array.ArrayId);
                if (used >= array.Limit)
                {
                    result.Held[job.Id] = new Hold(WaitKind.ArrayLimit, $"array {array.ArrayId} runs at most {array.Limit} elements at once (%{array.Limit}); {used} hold resources or go first");
                    continue;
                }

                offered[array.ArrayId] = offered.GetValueOrDefault(array.ArrayId) + 1;
            }

            result.Admitted.Add(job);
        }

        return result;
    }

    /// <summary>Whether a dependency of <paramref name="kind"/> on a job with <paramref name="fate"/> holds; null while it cannot tell yet.</summary>
    public static bool? Holds(DependencyKind kind, JobFate fate) => fate switch
    {
        JobFate.Pending => null,
        JobFate.Missing => false,
        JobFate.Succeeded => kind is DependencyKind.AfterOk or DependencyKind.AfterAny,
        _ => kind is DependencyKind.AfterNotOk or DependencyKind.AfterAny,
    };

    private static bool DependenciesHold(JobSpec job, AdmissionInput input, AdmissionResult result)
    {
        List<string>? pending = null;
        foreach (var dep in job.After)
        {
            var fate = input.Fate(dep.JobId);
            switch (Holds(dep.Kind, fate))
            {
                case null:
                    (pending ??= []).Add($"{dep.KindName}:{dep.JobId} (job {dep.JobId} has not ended)");
                    break;
                case false:
                    result.Doomed.Add((job, fate == JobFate.Missing
                        ? $"dependency {dep.KindName}:{dep.JobId}: job {dep.JobId} does not exist"
                        : $"dependency {dep.KindName}:{dep.JobId} can never be satisfied: job {dep.JobId} ended {(fate == JobFate.Succeeded ? "successfully" : "unsuccessfully")}"));
                    return false;
            }
        }

        if (pending is not null)
        {
            result.Held[job.Id] = new Hold(WaitKind.Dependencies, string.Join(", ", pending));
            return false;
        }

        return true;
    }
}
