using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>
/// Keeps the queue sorted between cycles for orders whose key depends on the job only (<see cref="QueueOrder.IsDynamic"/>
/// false). Each call drops the jobs that left, sorts only the jobs that arrived and merges the two runs, so a cycle costs
/// O(n + k log k) instead of O(n log n) for n queued and k new jobs. The result is exactly what a full sort with
/// <see cref="QueueOrdering.Compare"/> gives, because that comparison is a total order (ties end at the job id).
/// </summary>
internal sealed class QueueCache
{
    // Queued jobs by id, with the number of the last call that saw them queued.
    private readonly Dictionary<long, (JobSpec Job, long Seen)> _members = [];
    private long _call;
    private readonly List<(JobSpec Job, double Key)> _fresh = [];
    private List<(JobSpec Job, double Key)> _sorted = [];
    private List<(JobSpec Job, double Key)> _spare = [];
    private QueueOrder? _order;

    /// <summary>The ordered queue; the returned list is owned by the cache and valid until the next call.</summary>
    public List<(JobSpec Job, double Key)> Order(IReadOnlyCollection<JobSpec> pending, QueueOrder order, in QueueContext context)
    {
        if (!ReferenceEquals(order, _order))
        {
            _order = order;
            _members.Clear();
            _sorted.Clear();
        }

        var call = ++_call;
        _fresh.Clear();
        foreach (var job in pending)
        {
            ref var member = ref CollectionsMarshal.GetValueRefOrAddDefault(_members, job.Id, out var exists);
            if (exists && ReferenceEquals(member.Job, job))
            {
                member.Seen = call;
            }
            else
            {
                // New, or a different job under a known id: the old entry is dropped from the order below.
                member = (job, call);
                _fresh.Add((job, order.Key(job, context)));
            }
        }

        // Keep the still-queued jobs in their order.
        var kept = 0;
        for (var i = 0; i < _sorted.Count; i++)
        {
            var e = _sorted[i];
            ref var member = ref CollectionsMarshal.GetValueRefOrNullRef(_members, e.Job.Id);
            if (!Unsafe.IsNullRef(ref member) && ReferenceEquals(member.Job, e.Job) && member.Seen == call)
            {
                _sorted[kept++] = e;
            }
            else if (!Unsafe.IsNullRef(ref member) && ReferenceEquals(member.Job, e.Job))
            {
                _members.Remove(e.Job.Id);
            }
        }

        _sorted.RemoveRange(kept, _sorted.Count - kept);
        if (_fresh.Count == 0)
        {
            return _sorted;
        }

        _fresh.Sort(static (a, b) => QueueOrdering.Compare(a.Job, a.Key, b.Job, b.Key));

        // Merge the two sorted runs into the spare buffer and swap.
        _spare.Clear();
        int x = 0, y = 0;
        while (x < _sorted.Count && y < _fresh.Count)
        {
            var a = _sorted[x];
            var b = _fresh[y];
            if (QueueOrdering.Compare(a.Job, a.Key, b.Job, b.Key) <= 0)
            {
                _spare.Add(a);
                x++;
            }
            else
            {
                _spare.Add(b);
                y++;
            }
        }

        for (; x < _sorted.Count; x++)
        {
            _spare.Add(_sorted[x]);
        }

        for (; y < _fresh.Count; y++)
        {
            _spare.Add(_fresh[y]);
        }

        (_sorted, _spare) = (_spare, _sorted);
        return _sorted;
    }
}
