namespace Suanli.Server.Tests;

/// <summary>The reference rules of the server side (docs/architecture.md): wire contracts stand alone, the agent knows only them.</summary>
public sealed class ArchitectureTests
{
    private static string[] Ours(Type inAssembly) =>
        [.. inAssembly.Assembly.GetReferencedAssemblies().Select(a => a.Name!).Where(n => n.StartsWith("Suanli", StringComparison.Ordinal)).Order(StringComparer.Ordinal)];

    [Fact]
    public void Protocol_ReferencesNothingOfOurs() => Assert.Empty(Ours(typeof(AgentReport)));

    [Fact]
    public void TheAgent_ReferencesOnlyTheProtocol() => Assert.Equal(["Suanli.Protocol"], Ours(typeof(Agent.ProviderAgent)));

    [Fact]
    public void TheServer_ReferencesTheCoreAndTheProtocol_NeverTheAgent() => Assert.Equal(["Suanli.Core", "Suanli.Protocol"], Ours(typeof(ControlPlane)));
}
