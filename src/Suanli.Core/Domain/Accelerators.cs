namespace Suanli.Core.Domain;

/// <summary>Vendor of an accelerator model.</summary>
public enum AcceleratorVendor
{
    Nvidia,
    Huawei,
    Undisclosed,
}

/// <summary>
/// One accelerator model with its nameplate figures. TFLOPS are dense (no structured sparsity) peak figures from the
/// vendor's data sheet; FP16 is the tensor-core figure where the part has tensor cores. <see cref="SpeedFactor"/> is
/// the throughput relative to the reference device (A100 = 1.0) used by the heterogeneity scorer; it defaults to the
/// FP16 ratio and can be replaced by a measured benchmark factor.
/// </summary>
public sealed record AcceleratorModel(
    string Name,
    AcceleratorVendor Vendor,
    int MemoryGiB,
    double Fp16DenseTflops,
    double Fp32Tflops,
    double Fp64Tflops,
    double SpeedFactor,
    bool Domestic = false);

/// <summary>
/// The accelerator catalogue: model name to nameplate figures. Names are matched case-insensitively. The built-in
/// catalogue covers the NVIDIA data-centre parts in Chinese pools and Huawei Ascend; clusters can add models.
/// </summary>
public sealed class AcceleratorCatalogue
{
    private readonly Dictionary<string, AcceleratorModel> _models = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Creates a catalogue holding exactly <paramref name="models"/>.</summary>
    public AcceleratorCatalogue(IEnumerable<AcceleratorModel> models)
    {
        foreach (var m in models)
        {
            _models[m.Name] = m;
        }
    }

    /// <summary>All models, in name order.</summary>
    public IEnumerable<AcceleratorModel> Models => _models.Values.OrderBy(m => m.Name, StringComparer.Ordinal);

    /// <summary>Looks a model up by name (case-insensitive); null when unknown.</summary>
    public AcceleratorModel? Find(string name) => _models.GetValueOrDefault(name);

    /// <summary>True when the catalogue knows <paramref name="name"/>.</summary>
    public bool Contains(string name) => _models.ContainsKey(name);

    /// <summary>Returns a catalogue with <paramref name="extra"/> added (replacing models of the same name).</summary>
    public AcceleratorCatalogue With(IEnumerable<AcceleratorModel> extra) => new(_models.Values.Concat(extra));

    /// <summary>
    /// The built-in catalogue. Figures: vendor data sheets (dense, no sparsity). Ascend figures are Huawei's published
    /// FP16 numbers; Ascend FP32 is given as half of FP16 where Huawei publishes no FP32 figure, FP64 as 0 (unsupported).
    /// G1/G2/G3 are the undisclosed models of the Alibaba PAI trace: no nameplate figures (0), speed factor 1.
    /// </summary>
    public static AcceleratorCatalogue BuiltIn { get; } = new(
    [
        new("H100", AcceleratorVendor.Nvidia, 80, 989.4, 66.9, 33.5, 3.17),
        new("H800", AcceleratorVendor.Nvidia, 80, 989.4, 66.9, 0.98, 3.17),
        new("H20", AcceleratorVendor.Nvidia, 96, 148.0, 44.0, 1.0, 0.47),
        new("A100", AcceleratorVendor.Nvidia, 80, 312.0, 19.5, 9.7, 1.0),
        new("A800", AcceleratorVendor.Nvidia, 80, 312.0, 19.5, 9.7, 1.0),
        new("A10", AcceleratorVendor.Nvidia, 24, 125.0, 31.2, 0.98, 0.40),
        new("L40S", AcceleratorVendor.Nvidia, 48, 362.0, 91.6, 1.41, 1.16),
        new("V100", AcceleratorVendor.Nvidia, 32, 125.0, 15.7, 7.8, 0.40),
        new("V100M16", AcceleratorVendor.Nvidia, 16, 125.0, 15.7, 7.8, 0.40),
        new("V100M32", AcceleratorVendor.Nvidia, 32, 125.0, 15.7, 7.8, 0.40),
        new("T4", AcceleratorVendor.Nvidia, 16, 65.0, 8.1, 0.25, 0.21),
        new("P100", AcceleratorVendor.Nvidia, 16, 21.2, 10.6, 5.3, 0.07),
        new("Ascend910B", AcceleratorVendor.Huawei, 64, 376.0, 188.0, 0.0, 1.2, Domestic: true),
        new("Ascend910", AcceleratorVendor.Huawei, 32, 256.0, 128.0, 0.0, 0.82, Domestic: true),
        new("Ascend310P", AcceleratorVendor.Huawei, 48, 70.0, 35.0, 0.0, 0.22, Domestic: true),
        new("G1", AcceleratorVendor.Undisclosed, 0, 0, 0, 0, 1.0),
        new("G2", AcceleratorVendor.Undisclosed, 0, 0, 0, 0, 1.0),
        new("G3", AcceleratorVendor.Undisclosed, 0, 0, 0, 0, 1.0),
    ]);
}
