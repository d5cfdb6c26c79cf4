using System.Reflection;

namespace Suanli.Simulation.Tests;

public class ArchitectureTests
{
    [Fact]
    public void Core_ReferencesNoOtherSuanliAssembly()
    {
        var core = typeof(Suanli.Core.Scheduling.Scheduler).Assembly;
        Assert.DoesNotContain(core.GetReferencedAssemblies(), a => a.Name!.StartsWith("Suanli", StringComparison.Ordinal));
    }

    [Fact]
    public void Simulation_ReferencesOnlyCore()
    {
        var sim = typeof(Suanli.Simulation.Engine.Simulator).Assembly;
        Assert.Equal(["Suanli.Core"], sim.GetReferencedAssemblies().Select(a => a.Name!).Where(n => n.StartsWith("Suanli", StringComparison.Ordinal)));
    }

    [Fact]
    public void Core_HasNoIoOrAsyncTypes()
    {
        var core = typeof(Suanli.Core.Scheduling.Scheduler).Assembly;
        var refs = core.GetReferencedAssemblies().Select(a => a.Name).ToList();
        Assert.DoesNotContain("System.Net.Http", refs);
        Assert.DoesNotContain(core.GetTypes().SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly)),
            m => typeof(Task).IsAssignableFrom(m.ReturnType));
    }
}
