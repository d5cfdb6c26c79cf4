using System.Diagnostics;
using Suanli.Core.Domain;
using Suanli.Core.Market;
using Suanli.Core.Scheduling;
using Suanli.Server.Scheduling;
using Suanli.Server.Storage;

namespace Suanli.Server;

/// <summary>The scheduling cycle: the pool is rebuilt when it changed, admission and placement are the core's, and the cycle carries out its decisions (leases with their escrow holds, preemptions, doomed jobs).</summary>
public sealed partial class ControlPlane
{
    /// <summary>Wakes the scheduling loop.</summary>
    public void Wake()
    {
        if (_wake.CurrentCount == 0)
        {
            try
            {
                _wake.Release();
            }
            catch (Exception e) when (e is SemaphoreFullException or ObjectDisposedException)
            {
                // Already awake, or the host is shutting down.
            }
        }
    }

    /// <summary>
    /// Waits until there is work (a wake-up, or the cycle interval), then a little longer so a burst of wake-ups (many
    /// submissions) becomes one cycle; a cycle over a long queue may take a while, so at most about a quarter of the
    /// time goes to cycles.
    /// </summary>
    internal async Task WaitForWorkAsync(CancellationToken ct)
    {
        await _wake.WaitAsync(Options.CycleInterval, ct);
        await Task.Delay(MinCycleGap + (3 * _lastCycle), _time, ct);
    }

    /// <summary>One turn of the loop: lost providers, market housekeeping, the spot auction when due, a scheduling cycle.</summary>
    internal async Task TickAsync()
    {
        await DetectLostAsync();
        await HousekeepMarketAsync();
        if (NowMs >= _nextAuctionMs && HasSpotMarket())
        {
            await ClearSpotMarketAsync();
        }

        await CycleAsync();
    }

    private void RebuildPoolLocked()
    {
        var now = NowMs;
        var partition = PoolBuilder.Build(_providers.Values.Select(p => p.Record), _offers.Values, now, Catalogue, Options.Latency, o => (BuyerSellerPrices(o).Buyer, SpotPrice(o)));
        _partition = partition;
        var groups = partition.Pool.Groups;
        ReplayUsageLocked();
        var typical = PlacementUsesPrior ? TypicalTask.Of(_shapeCounts) : null;
        _shapesSinceBuild = 0;
        _priorInUse = (typical?.Count ?? 0, _shapeWindow.Count);
        // The memory of the scheduler being replaced (or, after a restart, of the last run) carries over.
        var memory = _scheduler?.LastStarted ?? _recoveredLastStarted;
        _scheduler = groups.Count > 0
            ? new Scheduler(partition.Pool, PolicyRegistry.Build(Options.Policy, partition.Pool, Options.Placement, Options.Backfill, typical: typical) with { Preemption = Options.Preemption, PreemptWithinTenant = true }) { LastStarted = memory }
            : null;
        _state = new ClusterState(partition.Pool);
        foreach (var j in _jobs.Values)
        {
            j.Parts.Clear();
            j.Allocation = null;
            if (j.Record.Allocation is null || j.Record.State is not (JobStates.Leased or JobStates.Running or JobStates.Cancelled))
            {
                continue;
            }

            // The lease names the nodes by their place in the physical group; find them in today's partition.
            foreach (var (gi, part) in partition.Place(j.Record.Allocation))
            {
                var a = new Allocation(gi, part);
                _state.Allocate(a);
                if (j.Allocation is null)
                {
                    j.Allocation = a;
                    j.PoolGroup = groups[gi].Id;
                }
                else
                {
                    j.Parts.Add((a, groups[gi].Id));
                }
            }
        }

        _poolDirty = false;
    }

    private volatile bool _leasing = true;

    /// <summary>
    /// Stops handing out new leases (the platform is shutting down: a job leased now would only be orphaned by the
    /// stopping agent). Everything else — reports, logs, cancels — goes on until the host stops.
    /// </summary>
    public void StopLeasing() => _leasing = false;

    /// <summary>One scheduling cycle: the core decides, the store makes each lease durable, agents are woken.</summary>
    public async Task CycleAsync()
    {
        if (!_leasing)
        {
            return;
        }

        var t0 = Stopwatch.GetTimestamp();
        await LearnFatesAsync();

        // The pool is brought up to date before the wallets are read, so a priced pool is never scheduled unfunded.
        lock (_gate)
        {
            DrainInboxLocked();
            if (_poolDirty || NowMs >= (_partition?.NextChangeMs ?? long.MaxValue))
            {
                RebuildPoolLocked();
            }
        }

        var spendable = (_partition?.Priced ?? false) ? await _ledger.SpendableAsync(NowMs) : null;
        List<(LiveJob Job, Allocation Alloc, NodeGroup Group, long ProviderId, long Epoch, string LocalGroup, HoldPlan? Hold, string Encoded)> leases = [];
        List<(JobSpec Job, string Reason)> doomed;
        List<(LiveJob Job, string Why)> unstartedVictims = [];
        var scheduled = false;
        var fundsUnread = false;
        int pendingCount = 0, preemptedCount = 0, leasedCount = 0;
        long generationAtCycle = 0;
        Dictionary<long, long> tenantMoneyAtCycle = [];
        lock (_gate)
        {
            if (!_leasing)
            {
                return; // stopped while this cycle waited for the gate
            }

            DrainInboxLocked();
            if (_poolDirty || NowMs >= (_partition?.NextChangeMs ?? long.MaxValue))
            {
                RebuildPoolLocked();
            }

            // The pool became priced while the wallets were read (an offer published meanwhile): placing now would let
            // the core spend money it was never told about. Skip this cycle's placements and run again at once.
            fundsUnread = spendable is null && (_partition?.Priced ?? false);

            // Admission (dependencies, array throttles, spot) is the core's: the simulator runs the same rules.
            var generation = Interlocked.Read(ref _walletGeneration);
            var queued = new List<LiveJob>();
            bool gated = false, dependencies = false;
            foreach (var j in _jobs.Values)
            {
                if (j.Record.State == JobStates.Queued && j.Allocation is null && !StillUnfunded(j, generation))
                {
                    queued.Add(j);
                    dependencies |= j.Spec.After.Count > 0;
                    gated |= j.Spec.Array is not null || j.Spec.Tier == Tiers.Interruptible;
                }
            }

            // Only a queue with dependencies, arrays or spot jobs needs the admission pass (as in the simulator).
            _needFates = dependencies;
            gated |= dependencies;
            doomed = [];
            _holds = [];
            if (gated)
            {
                var admission = Admission.Admit(queued.ConvertAll(j => j.Spec), AdmissionInputLocked());
                _holds = admission.Held;
                doomed = admission.Doomed;
                queued = admission.Admitted.ConvertAll(j => _jobs[j.Id]);
            }

            _metrics.QueueDepth(queued.Count);
            if (_scheduler is null || _state is null || PoolNow is null || PoolNow.Groups.Count == 0 || fundsUnread)
            {
                queued.Clear();
            }

            // Jobs no node group of the current pool can ever run stay queued (explain names the filters) but are not
            // re-ordered every cycle; the pool changing (a provider joining) re-evaluates them.
            var pending = new List<JobSpec>(queued.Count);
            foreach (var j in queued)
            {
                if (_scheduler!.FeasibleGroups(j.Spec).Count > 0)
                {
                    pending.Add(j.Spec);
                }
            }

            if (!fundsUnread)
            {
                _waits = []; // otherwise explain keeps the last cycle's words until the next one
            }

            if (pending.Count > 0)
            {
                scheduled = true;
                var running = _jobs.Values.Where(j => j.Allocation is not null)
                    .Select(j => new RunningJob(j.Spec, (j.Record.StartedMs ?? NowMs) / 1000, j.Allocation!)).ToList();
                var tenants = _tenants.Values.ToDictionary(t => t.Id.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    t => new Tenant(t.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), [t.Sector], t.Weight));
                var funds = spendable is null ? null : FundsLocked(pending, spendable);
                var result = _scheduler!.RunCycle(new CycleInput(NowMs / 1000, pending, running, tenants, _fairShare, Predictor: _predictor, Funds: funds), _state!);
                _waits = result.Waiting;
                pendingCount = pending.Count;
                preemptedCount = result.Preempted.Count;
                var started = result.Started;
                if (result.Preempted.Count > 0)
                {
                    started = PreemptLocked(result, unstartedVictims);
                }

                foreach (var placed in started)
                {
                    var live = _jobs[placed.Job.Id];
                    var group = PoolNow!.Groups[placed.Allocation.Group];
                    var provider = _providers.Values.First(p => p.Record.Name == group.ProviderId);
                    live.Allocation = placed.Allocation;
                    live.PoolGroup = group.Id;
                    live.Unfunded = null;
                    _scheduler.Forget(placed.Job);
                    var (localGroup, offer) = _partition!.Sources[placed.Allocation.Group];
                    leases.Add((live, placed.Allocation, group, provider.Record.Id, provider.Record.Epoch, localGroup, offer is null ? null : HoldFor(live, group, offer),
                        _partition!.Encode(group.Id, placed.Allocation)));
                }

                generationAtCycle = generation;
                foreach (var l in leases)
                {
                    tenantMoneyAtCycle[l.Job.Record.TenantId] = _tenantMoney.GetValueOrDefault(l.Job.Record.TenantId);
                }
            }
        }

        foreach (var (victim, why) in unstartedVictims)
        {
            await RequeueUnstartedAsync(victim, why, NowMs);
        }

        foreach (var (job, reason) in doomed)
        {
            try
            {
                await CancelAsync(job.Id, reason);
            }
            catch (StoreConflictException)
            {
                // Cancelled or started meanwhile.
            }
        }

        if (fundsUnread)
        {
            Wake();
        }

        if (!scheduled)
        {
            _lastCycle = Stopwatch.GetElapsedTime(t0); // the loop backs off in proportion to what a cycle costs, placing or not
            return;
        }

        var now = NowMs;
        var writes = leases.Select(async l =>
        {
            try
            {
                var priced = l.Hold is { } h ? $"; {h.Tier} at {Money.Yuan(h.PriceFen)}/{h.Unit}, {Money.Yuan(h.HoldFen)} held in escrow" : "";
                var rec = await _store.ApplyAsync(new Transition(l.Job.Record.Id, [JobStates.Queued], JobStates.Leased, $"leased to {l.Group.Id} (epoch {l.Epoch}){priced}")
                {
                    Lease = (l.ProviderId, l.LocalGroup, l.Epoch, l.Encoded), AtMs = now, Hold = l.Hold,
                });
                lock (_gate)
                {
                    l.Job.Record = rec;
                    l.Job.LeasedMs = now;
                    if (_providers.TryGetValue(l.ProviderId, out var p))
                    {
                        p.Wake.TrySetResult();
                    }
                }

                _metrics.Transition(JobStates.Queued, JobStates.Leased);
                Interlocked.Increment(ref leasedCount);
                ServerLog.Leased(_log, l.Job.Record.Id, l.Group.Id, l.Group.ProviderId);
                if (l.Hold is { } held)
                {
                    _metrics.Hold(held.Tier);
                }
            }
            catch (StoreConflictException e) when (e.Code == "insufficient_funds")
            {
                ServerLog.LeaseRefused(_log, l.Job.Record.Id, e.Code, e.Message);
                // The wallet cannot cover the hold: the job stays queued and is tried again once money moves.
                _metrics.Unfunded();
                lock (_gate)
                {
                    ReleaseLocked(l.Job);
                    l.Job.Unfunded = (generationAtCycle, tenantMoneyAtCycle.GetValueOrDefault(l.Job.Record.TenantId), $"waiting for funds: {e.Message}");
                }
            }
            catch (StoreConflictException e)
            {
                ServerLog.LeaseRefused(_log, l.Job.Record.Id, e.Code, e.Message);
                // Cancelled meanwhile, or the provider's agent re-registered (new epoch) since this cycle read the pool:
                // give the resources back; the job, if still queued, is placed again on the current pool.
                lock (_gate)
                {
                    ReleaseLocked(l.Job);
                    if (e.Code == "stale_epoch")
                    {
                        _poolDirty = true;
                        Wake();
                    }
                    else if (l.Job.Record.State == JobStates.Queued)
                    {
                        // Our view said queued but the store refused: it was cancelled meanwhile.
                        _jobs.Remove(l.Job.Record.Id);
                    }
                }
            }
        });
        await Task.WhenAll(writes);
        _lastCycle = Stopwatch.GetElapsedTime(t0);
        _metrics.Cycle(_lastCycle.TotalSeconds, leases.Count);
        ServerLog.Cycle(_log, pendingCount, leasedCount, _waits.Count, preemptedCount, _holds.Count, _lastCycle.TotalMilliseconds);
    }

    /// <summary>
    /// A job told to give way before it started (leased, not running) goes straight back to the queue: nothing ran,
    /// nothing is charged, its attempt is given back. If it started or ended meanwhile, the notice path takes over.
    /// </summary>
    private async Task RequeueUnstartedAsync(LiveJob j, string why, long now)
    {
        try
        {
            var rec = await _store.ApplyAsync(new Transition(j.Record.Id, [JobStates.Leased], JobStates.Queued, $"{why} before it started; requeued")
            {
                AtMs = now, Requeue = true, GrantAttempt = true, Settle = new SettlePlan(j.Record.Attempt, Void: true, 0, "requeued before start"), FeeBps = Options.FeeBps,
            });
            MoneyMoved(j.Record.TenantId);
            Finish(j, rec, JobStates.Leased);
        }
        catch (StoreConflictException)
        {
            // It started or ended meanwhile: if running, it stops at its (immediate) deadline as any victim does.
        }
    }

    /// <summary>
    /// Carries out the core's preemptions: the victims are told to stop (the spot notice, then requeued with the attempt
    /// given back). A preempting placement, and any other placement of the cycle on a node a victim still holds, is not
    /// leased now (it counted on resources the victim holds until it stops); the job starts in a later cycle once its
    /// victims are gone. Placements elsewhere are leased as usual. Returns the placements that can be leased.
    /// </summary>
    private List<Placement> PreemptLocked(CycleResult result, List<(LiveJob Job, string Why)> unstarted)
    {
        // Nodes the victims hold until they stop: a placement of this cycle that touches one counted on their release.
        var held = new HashSet<(int Group, int Node)>();
        foreach (var victim in result.Preempted)
        {
            foreach (var slice in victim.Allocation.Slices)
            {
                held.Add((victim.Allocation.Group, slice.Node));
            }
        }

        var now = NowMs;
        var keep = new List<Placement>(result.Started.Count);
        var released = false; // placements before the first preempting one were made while the victims still held theirs
        foreach (var placed in result.Started)
        {
            released |= placed.Preempts.Count > 0;
            if (placed.Preempts.Count == 0 && (!released || !placed.Allocation.Slices.Any(sl => held.Contains((placed.Allocation.Group, sl.Node)))))
            {
                keep.Add(placed);
                continue;
            }

            _state!.Release(placed.Allocation);
            foreach (var victim in placed.Preempts)
            {
                if (_jobs.TryGetValue(victim, out var v) && v.Preempting is null && v.Record.State is JobStates.Leased or JobStates.Running)
                {
                    _metrics.Preempted();
                    var why = $"preempted by job {placed.Job.Id} of priority class {placed.Job.PriorityClass} (this job's class is {v.Spec.PriorityClass})";
                    if (v.Record.State == JobStates.Leased && !v.HandedOut)
                    {
                        // No agent has it yet, so nothing ran: no notice to wait out, it goes straight back to the queue
                        // (as an outbid spot job). Marked first, so no lease poll hands it out before the requeue.
                        unstarted.Add((v, why));
                        v.Preempting = (now, why);
                        continue;
                    }

                    v.Preempting = (now + (long)Options.SpotNotice.TotalMilliseconds, why);
                    if (_providers.TryGetValue(v.Record.ProviderId ?? -1, out var p))
                    {
                        p.Wake.TrySetResult();
                    }
                }
            }
        }

        foreach (var victim in result.Preempted)
        {
            _state!.Allocate(victim.Allocation); // it holds its resources until its agent reports it stopped
        }

        return keep;
    }

    // What admission knows of the jobs queued jobs depend on that have left the live set: a final state never changes,
    // so each is read from the store once; entries no queued job needs any more are dropped.
    private readonly Dictionary<long, JobFate> _fates = [];
    private Dictionary<long, Hold> _holds = [];
    private volatile bool _needFates = true; // a queued job has dependencies (set by each cycle and by every submission with some)

    private static JobFate FateOf(string state) => state switch
    {
        JobStates.Succeeded => JobFate.Succeeded,
        JobStates.Failed or JobStates.Cancelled or JobStates.Lost => JobFate.Unsuccessful,
        _ => JobFate.Pending,
    };

    /// <summary>Reads, once each, the final states of dependencies that are no longer live (outside the gate).</summary>
    private async Task LearnFatesAsync()
    {
        if (!_needFates)
        {
            return;
        }

        List<long> unknown;
        lock (_gate)
        {
            DrainInboxLocked();
            var needed = new HashSet<long>();
            foreach (var j in _jobs.Values)
            {
                if (j.Record.State == JobStates.Queued)
                {
                    foreach (var d in j.Spec.After)
                    {
                        needed.Add(d.JobId);
                    }
                }
            }

            foreach (var id in _fates.Keys.Where(id => !needed.Contains(id)).ToList())
            {
                _fates.Remove(id);
            }

            unknown = [.. needed.Where(id => !_jobs.ContainsKey(id) && !_fates.ContainsKey(id))];
        }

        foreach (var id in unknown)
        {
            var rec = await _store.GetJobAsync(id);
            lock (_gate)
            {
                if (rec is null || JobStates.IsTerminal(rec.State))
                {
                    _fates[id] = rec is null ? JobFate.Missing : FateOf(rec.State); // final: never changes
                }
            }
        }
    }

    private AdmissionInput AdmissionInputLocked()
    {
        var active = new Dictionary<long, int>();
        foreach (var j in _jobs.Values)
        {
            if (j.Spec.Array is { } a && j.Record.State is JobStates.Leased or JobStates.Running)
            {
                active[a.ArrayId] = active.GetValueOrDefault(a.ArrayId) + 1;
            }
        }

        // A dependency neither live nor learnt yet (it left the live set since LearnFatesAsync) waits one more cycle.
        return new AdmissionInput(
            id => _jobs.TryGetValue(id, out var d) ? FateOf(d.Record.State) : _fates.TryGetValue(id, out var f) ? f : JobFate.Pending,
            active,
            _spotWinners);
    }

    /// <summary>What each tenant with queued work can put in escrow this cycle (fen); tenants without a floor are not checked.</summary>
    private static Dictionary<string, long> FundsLocked(List<JobSpec> pending, IReadOnlyDictionary<long, long> spendable)
    {
        var funds = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var j in pending)
        {
            if (funds.ContainsKey(j.Tenant))
            {
                continue;
            }

            var have = spendable.GetValueOrDefault(long.Parse(j.Tenant, System.Globalization.CultureInfo.InvariantCulture));
            if (have != long.MaxValue)
            {
                funds[j.Tenant] = have;
            }
        }

        return funds;
    }

    /// <summary>The escrow a lease on an offer's capacity holds: the job's units on that node shape × price × its time limit.</summary>
    /// <remarks>The amount is the core's <see cref="Escrow.HoldFen"/> on the pool group's terms: the rule the scheduler's funds check used.</remarks>
    private HoldPlan HoldFor(LiveJob job, NodeGroup group, OfferRecord offer)
    {
        var terms = group.Terms ?? throw new InvalidOperationException($"pool group {group.Id} sells offer {offer.Id} without terms");
        var (_, seller) = BuyerSellerPrices(offer);
        var domestic = group.Shape.AcceleratorModel is { } m && Catalogue.Find(m)?.Domestic == true;
        return new HoldPlan(offer.Id, offer.Tier, offer.Unit, terms.PriceFen ?? 0, seller, Escrow.UnitsMilli(job.Spec, group, terms), Escrow.HoldFen(job.Spec, group), domestic);
    }

    /// <summary>What a job pays and the provider earns per unit-hour of an offer: spot pays the clearing prices; a reserved contract was paid up front (take-or-pay), so its use is metered at 0.</summary>
    private (long Buyer, long Seller) BuyerSellerPrices(OfferRecord offer) => offer.Tier switch
    {
        Tiers.Interruptible => SpotPrices(offer),
        Tiers.Reserved when offer.ContractFen is not null => (0, 0),
        _ => (offer.PriceFen, offer.PriceFen),
    };
}
