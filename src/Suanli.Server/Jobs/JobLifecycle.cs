using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>How an attempt that a provider's agent reported ended (the agent's words, bounded in time by the control plane).</summary>
/// <param name="State">succeeded, failed, or interrupted (the agent stopped it itself).</param>
/// <param name="ExitCode">The process's exit code, when it has one.</param>
/// <param name="Message">The agent's words.</param>
/// <param name="EndedMs">When it ended (<see cref="JobLifecycle.BoundedEnd"/>).</param>
/// <param name="Usage">What the attempt used (null: nothing to meter).</param>
/// <param name="StartFilledIn">True when the running report never arrived and the final one's observed start stands in for it.</param>
public sealed record AttemptEnd(string State, int? ExitCode, string? Message, long EndedMs, UsageRecord? Usage, bool StartFilledIn);

/// <summary>What the control plane knows of a job beyond its record when its attempt ends.</summary>
/// <param name="RetryOnFailure">The job's retry policy retries failed exits.</param>
/// <param name="Preempting">The job was told to stop (preemption or outbid spot) and why; null when not.</param>
public sealed record AttemptContext(bool RetryOnFailure, (long DeadlineMs, string Why)? Preempting);

/// <summary>
/// The job lifecycle's rules, pure: from a job's record and what happened to its attempt, the transition to apply
/// (next state, requeue, attempt granted back, what is charged or voided). The control plane applies them to the store;
/// it decides nothing itself, so the rules are tested here without a store or a clock.
/// </summary>
public static class JobLifecycle
{
    /// <summary>
    /// When an attempt started, as the agent observed it, bounded below by its lease (a provider cannot bill time before
    /// it was given the job) and above by receipt (<paramref name="nowMs"/>); without an observation, receipt.
    /// </summary>
    public static long BoundedStart(long? observedMs, long? leasedMs, long nowMs) =>
        observedMs is not { } o || o >= nowMs ? nowMs : Math.Clamp(o, Math.Min(leasedMs ?? nowMs, nowMs), nowMs);

    /// <summary>
    /// When an attempt ended: when the agent saw it end, bounded by its start and by receipt, so a report that waited
    /// out a control-plane outage does not bill the outage.
    /// </summary>
    public static long BoundedEnd(long? observedMs, long? startedMs, long nowMs) => Math.Clamp(observedMs ?? nowMs, Math.Min(startedMs ?? nowMs, nowMs), nowMs);

    /// <summary>The charge for an attempt that ended normally: its metered time; voided when nothing was metered.</summary>
    public static SettlePlan Charge(int attempt, UsageRecord? usage, string note) =>
        usage is null ? new SettlePlan(attempt, Void: true, 0, note + "; nothing metered")
            : new SettlePlan(attempt, Void: false, Math.Max(0, usage.EndedMs - usage.StartedMs), note);

    /// <summary>
    /// The provider stopped the attempt itself (its agent is shutting down): the job did not fail and the tenant is not
    /// charged; it goes back to the queue without using one of its attempts.
    /// </summary>
    public static Transition Interrupted(JobRecord current, AttemptEnd end, int feeBps) =>
        new(current.Id, [JobStates.Leased, JobStates.Running], JobStates.Queued, $"interrupted by the provider: {end.Message ?? "agent stopping"}; requeued")
        {
            Requeue = true, GrantAttempt = true, Usage = end.Usage, FeeBps = feeBps,
            Settle = new SettlePlan(current.Attempt, Void: true, 0, "interrupted by the provider: not charged"),
        };

    /// <summary>The process of a cancelled job ended: it is metered and charged as a cancelled attempt (its resources are then freed).</summary>
    public static Transition CancelledProcessEnded(JobRecord cancelled, AttemptEnd end, int feeBps) =>
        new(cancelled.Id, [JobStates.Cancelled], JobStates.Cancelled, $"process stopped (exit {end.ExitCode})")
        {
            Usage = end.Usage, Settle = Charge(cancelled.Attempt, end.Usage, "cancelled by the tenant"), FeeBps = feeBps,
        };

    /// <summary>
    /// An attempt ended on its own (succeeded or failed). A job told to stop goes back to the queue with its attempt
    /// given back (charged for what ran, unless it had no notice) — except one that succeeded during its notice, which
    /// is done; a failure is retried while the policy says so and attempts are left; otherwise the job ends.
    /// </summary>
    public static Transition Ended(JobRecord current, AttemptEnd end, AttemptContext context, int feeBps, TimeSpan spotNotice)
    {
        ArgumentNullException.ThrowIfNull(current);
        ArgumentNullException.ThrowIfNull(end);
        ArgumentNullException.ThrowIfNull(context);
        if (end.State is not (JobStates.Succeeded or JobStates.Failed))
        {
            throw new ArgumentOutOfRangeException(nameof(end), end.State, "an attempt ends succeeded or failed");
        }

        var preempted = end.State == JobStates.Succeeded ? null : context.Preempting;
        var retry = preempted is not null || (end.State == JobStates.Failed && context.RetryOnFailure && current.Attempt < current.MaxAttempts);
        var message = preempted is { } pre ? $"preempted after notice: {pre.Why}; requeued"
            : retry ? $"failed with exit {end.ExitCode}; retry {current.Attempt + 1}/{current.MaxAttempts}"
            : end.Message ?? $"exit {end.ExitCode}";
        return new Transition(current.Id, [JobStates.Leased, JobStates.Running], retry ? JobStates.Queued : end.State, message)
        {
            Usage = end.Usage, Requeue = retry, GrantAttempt = preempted is not null, FeeBps = feeBps,
            Settle = preempted is not null && spotNotice <= TimeSpan.Zero
                ? new SettlePlan(current.Attempt, Void: true, 0, "preempted without notice: not charged")
                : Charge(current.Attempt, end.Usage, preempted is null ? $"ended {end.State}" : "preempted after notice"),
            EndedMs = retry ? null : end.EndedMs, ExitCode = retry ? null : end.ExitCode, StartedMs = !retry && end.StartFilledIn ? current.StartedMs : null,
            Reason = end.State == JobStates.Failed && !retry ? end.Message ?? $"exit {end.ExitCode}" : null,
        };
    }

    /// <summary>
    /// The job's provider was lost: a job leased but never started did not use its attempt and goes back whatever its
    /// retry policy says; a running one is retried while attempts are left, else it ends lost. The provider was at
    /// fault: nothing is charged. Null for a job in another state (nothing to do).
    /// </summary>
    public static Transition? Lost(JobRecord current, string why, UsageRecord? usage, long nowMs, int feeBps)
    {
        ArgumentNullException.ThrowIfNull(current);
        if (current.State is not (JobStates.Leased or JobStates.Running))
        {
            return null;
        }

        var neverStarted = current.State == JobStates.Leased;
        var retry = neverStarted || current.Attempt < current.MaxAttempts;
        return new Transition(current.Id, [JobStates.Leased, JobStates.Running], retry ? JobStates.Queued : JobStates.Lost,
            neverStarted ? $"lost before it started: {why}; requeued" : retry ? $"lost: {why}; retry {current.Attempt + 1}/{current.MaxAttempts}" : $"lost: {why}; no attempt left")
        {
            AtMs = nowMs, Requeue = retry, GrantAttempt = neverStarted, EndedMs = retry ? null : nowMs, Reason = retry ? null : "provider lost", Usage = usage,
            Settle = new SettlePlan(current.Attempt, Void: true, 0, $"provider at fault: {why}"), FeeBps = feeBps,
        };
    }
}
