using System.Numerics;
using Suanli.Core.Domain;

namespace Suanli.Core.Scheduling;

/// <summary>
/// One task's share of one node: CPU, memory and, for accelerator tasks, the devices it holds
/// (<see cref="DeviceMask"/>, bit i = device i) with <see cref="GpuMilli"/> of each.
/// </summary>
public readonly record struct Slice(int Node, long MilliCpu, long MemoryMiB, ulong DeviceMask, int GpuMilli, int Kind);

/// <summary>Resources held by one job in one node group: one slice per task. Immutable once built.</summary>
public sealed class Allocation(int group, Slice[] slices)
{
    /// <summary>Index of the node group (into <see cref="Pool.Groups"/>).</summary>
    public int Group { get; } = group;

    /// <summary>One slice per task.</summary>
    public IReadOnlyList<Slice> Slices => slices;

    internal Slice[] Raw => slices;

    /// <summary>Distinct nodes touched.</summary>
    public int NodeCount => slices.Select(s => s.Node).Distinct().Count();

    /// <summary>Total milli-GPU held.</summary>
    public long GpuMilli => slices.Sum(s => (long)BitOperations.PopCount(s.DeviceMask) * s.GpuMilli);

    /// <summary>Total milli-CPU held.</summary>
    public long MilliCpu => slices.Sum(s => s.MilliCpu);
}

/// <summary>
/// Free resources of every node of a pool, with per-group totals for quick rejection. Mutable and not thread-safe:
/// the owner (simulator or live scheduling loop) applies allocations and releases. Free values may go negative while a
/// reservation is overlaid on busy nodes (see <see cref="Scheduler"/>); such nodes simply fit nothing.
/// </summary>
public sealed class ClusterState
{
    private readonly GroupState[] _groups;

    /// <summary>Creates the state of an empty pool.</summary>
    public ClusterState(Pool pool)
    {
        Pool = pool;
        _groups = [.. pool.Groups.Select(g => new GroupState(g))];
    }

    /// <summary>The pool this state describes.</summary>
    public Pool Pool { get; }

    internal GroupState Group(int index) => _groups[index];

    /// <summary>Number of node groups.</summary>
    public int GroupCount => _groups.Length;

    /// <summary>Takes the resources of <paramref name="allocation"/>.</summary>
    public void Allocate(Allocation allocation)
    {
        Version++;
        ApplyBase(allocation, -1);
        Apply(allocation, -1);
    }

    /// <summary>Returns the resources of <paramref name="allocation"/>.</summary>
    public void Release(Allocation allocation)
    {
        Version++;
        ApplyBase(allocation, +1);
        Apply(allocation, +1);
    }

    /// <summary>
    /// Keeps the group's base sums: free resources counting allocations only, never the scheduler's reservation
    /// overlays. Base per-node values never go negative (an allocation only takes what is free even under an overlay),
    /// so the base sums need no clamping and move by exactly the allocation.
    /// </summary>
    private void ApplyBase(Allocation allocation, int sign)
    {
        var g = _groups[allocation.Group];
        foreach (ref readonly var s in allocation.Raw.AsSpan())
        {
            g.BaseFreeCpu += sign * s.MilliCpu;
            g.BaseFreeMem += sign * s.MemoryMiB;
            g.BaseFreeGpu += sign * (long)BitOperations.PopCount(s.DeviceMask) * s.GpuMilli;
        }
    }

    /// <summary>
    /// Counts <see cref="Allocate"/> and <see cref="Release"/> calls: equal versions mean no allocation changed in
    /// between (the scheduler's transient reservation overlays do not count; they are always undone).
    /// </summary>
    public long Version { get; private set; }

    internal void Apply(Allocation allocation, int sign)
    {
        var g = _groups[allocation.Group];
        foreach (ref readonly var s in allocation.Raw.AsSpan())
        {
            Apply(g, s, sign);
        }
    }

    /// <summary>Applies one slice of group <paramref name="group"/> (no allocation object needed).</summary>
    internal void Apply(int group, in Slice slice, int sign) => Apply(_groups[group], slice, sign);

    private static void Apply(GroupState g, in Slice s, int sign)
    {
        // Group sums count only non-negative free values, so an overlay that drives busy nodes negative never
        // hides room that other nodes still have.
        g.SumFreeCpu += Shift(ref g.FreeCpu[s.Node], sign * s.MilliCpu);
        g.SumFreeMem += Shift(ref g.FreeMem[s.Node], sign * s.MemoryMiB);
        var mask = s.DeviceMask;
        while (mask != 0)
        {
            var d = BitOperations.TrailingZeroCount(mask);
            mask &= mask - 1;
            ref var free = ref g.FreeGpu[(s.Node * g.GpusPerNode) + d];
            var before = Math.Max(0, free);
            free += sign * s.GpuMilli;
            g.SumFreeGpu += Math.Max(0, free) - before;
        }

        g.KindCounts[(s.Node * TaskResources.KindCount) + s.Kind] -= (short)sign;
    }

    private static long Shift(ref long free, long delta)
    {
        var before = Math.Max(0, free);
        free += delta;
        return Math.Max(0, free) - before;
    }

    /// <summary>Free milli-CPU of node <paramref name="node"/> in group <paramref name="group"/>.</summary>
    public long FreeMilliCpu(int group, int node) => _groups[group].FreeCpu[node];

    /// <summary>Free MiB of a node.</summary>
    public long FreeMemoryMiB(int group, int node) => _groups[group].FreeMem[node];

    /// <summary>Free milli-GPU of one device of a node.</summary>
    public int FreeGpuMilli(int group, int node, int device) => _groups[group].FreeGpu[(node * _groups[group].GpusPerNode) + device];

    /// <summary>Total free milli-GPU in the pool.</summary>
    public long TotalFreeGpuMilli => _groups.Sum(g => g.SumFreeGpu);

    /// <summary>Total free milli-CPU in the pool.</summary>
    public long TotalFreeMilliCpu => _groups.Sum(g => g.SumFreeCpu);

    /// <summary>A read-only view of one node for scorers.</summary>
    public NodeView Node(int group, int node) => new(_groups[group], node);

    internal sealed class GroupState
    {
        public GroupState(NodeGroup g)
        {
            Spec = g;
            Nodes = g.NodeCount;
            GpusPerNode = g.Shape.AcceleratorCount;
            FreeCpu = new long[Nodes];
            FreeMem = new long[Nodes];
            FreeGpu = new int[Nodes * GpusPerNode];
            KindCounts = new short[Nodes * TaskResources.KindCount];
            Array.Fill(FreeCpu, g.Shape.MilliCpu);
            Array.Fill(FreeMem, g.Shape.MemoryMiB);
            Array.Fill(FreeGpu, 1000);
            SumFreeCpu = g.Shape.MilliCpu * Nodes;
            SumFreeMem = g.Shape.MemoryMiB * Nodes;
            SumFreeGpu = 1000L * GpusPerNode * Nodes;
            BaseFreeCpu = SumFreeCpu;
            BaseFreeMem = SumFreeMem;
            BaseFreeGpu = SumFreeGpu;
        }

        public NodeGroup Spec { get; }

        public int Nodes { get; }

        public int GpusPerNode { get; }

        public long[] FreeCpu { get; }

        public long[] FreeMem { get; }

        public int[] FreeGpu { get; }

        public short[] KindCounts { get; }

        public long SumFreeCpu { get; set; }

        public long SumFreeMem { get; set; }

        public long SumFreeGpu { get; set; }

        /// <summary>Free milli-CPU ignoring reservation overlays.</summary>
        public long BaseFreeCpu { get; set; }

        /// <summary>Free MiB ignoring reservation overlays.</summary>
        public long BaseFreeMem { get; set; }

        /// <summary>Free milli-GPU ignoring reservation overlays.</summary>
        public long BaseFreeGpu { get; set; }
    }
}

/// <summary>Read-only view of one node's free resources, for node scorers. Must not be kept past a state change.</summary>
public readonly ref struct NodeView
{
    private readonly ClusterState.GroupState _g;

    internal NodeView(ClusterState.GroupState g, int node)
    {
        _g = g;
        Index = node;
    }

    /// <summary>Node index within its group.</summary>
    public int Index { get; }

    /// <summary>The node's shape (capacity).</summary>
    public NodeShape Shape => _g.Spec.Shape;

    /// <summary>Free milli-CPU.</summary>
    public long FreeMilliCpu => _g.FreeCpu[Index];

    /// <summary>Free MiB.</summary>
    public long FreeMemoryMiB => _g.FreeMem[Index];

    /// <summary>Free milli-GPU per device, in device index order.</summary>
    public ReadOnlySpan<int> FreeGpu => _g.FreeGpu.AsSpan(Index * _g.GpusPerNode, _g.GpusPerNode);

    /// <summary>Number of tasks of each kind (see <see cref="TaskResources.Kind"/>) on the node.</summary>
    public ReadOnlySpan<short> KindCounts => _g.KindCounts.AsSpan(Index * TaskResources.KindCount, TaskResources.KindCount);

    /// <summary>Total free milli-GPU of the node.</summary>
    public long TotalFreeGpu
    {
        get
        {
            long sum = 0;
            foreach (var f in FreeGpu)
            {
                sum += f;
            }

            return sum;
        }
    }
}
