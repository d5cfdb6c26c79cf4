using Suanli.Core.Market;

namespace Suanli.Core.Tests;

/// <summary>The money rules that used to live in the SQLite adapter, tested as the pure code they are now.</summary>
public sealed class MarketRulesTests
{
    private const long Now = 1_800_000_000_000;

    private static VoucherTerms V(long id, long validTo, long available = 100, bool expired = false, string[]? sectors = null, long from = Now - 1, long to = Now + 1_000_000) =>
        new(id, validTo, expired, available, 5000, 7000, sectors ?? [], from, to);

    [Fact]
    public void TheSoonestExpiringEligibleVoucherPays_TiesByLowerId_NoneBetweenRelatedParties()
    {
        VoucherTerms[] vouchers =
        [
            V(1, Now + 500),
            V(2, Now + 100, available: 0),               // empty
            V(3, Now + 100, sectors: ["manufacturing"]), // another sector
            V(4, Now + 200, expired: true),
            V(5, Now + 300, from: Now + 10),             // programme not begun
            V(6, Now + 400),
            V(7, Now + 400),
            V(8, Now),                                   // ends now
        ];
        Assert.Equal(6, VoucherRules.Choose(vouchers, "research", relatedParty: false, Now)!.VoucherId);
        Assert.Equal(3, VoucherRules.Choose(vouchers, "manufacturing", relatedParty: false, Now)!.VoucherId);
        Assert.Null(VoucherRules.Choose(vouchers, "research", relatedParty: true, Now));
        Assert.Null(VoucherRules.Choose([V(1, Now + 5, to: Now)], "research", false, Now)); // programme ended
    }

    [Fact]
    public void TheDomesticShare_AppliesOnlyToDomesticJobs_AndOnlyWhereTheProgrammeSetsOne()
    {
        var v = V(1, Now + 5);
        Assert.Equal(7000, VoucherRules.ShareBps(v, domestic: true));
        Assert.Equal(5000, VoucherRules.ShareBps(v, domestic: false));
        Assert.Equal(5000, VoucherRules.ShareBps(v with { DomesticShareBps = null }, domestic: true));
    }

    [Fact]
    public void Issuing_IsRefusedNamingTheField_ForAnEndedProgramme_ABadWindow_AnotherSector_AndTheCap()
    {
        (string Code, string Message)? Issue(long amount, long validTo, string sector = "research", long issued = 0, long programmeTo = Now + 1000) =>
            VoucherRules.IssueRefusal("p", ["research"], programmeTo, tenantCapFen: 500, "t", sector, issued, amount, validTo, Now);
        Assert.Null(Issue(500, Now + 1000));
        Assert.Equal("expired", Issue(1, Now + 1000, programmeTo: Now)!.Value.Code);
        Assert.Equal("invalid", Issue(1, Now)!.Value.Code);
        Assert.Equal("invalid", Issue(1, Now + 1001)!.Value.Code);
        Assert.Equal("not_eligible", Issue(1, Now + 10, sector: "retail")!.Value.Code);
        var cap = Issue(101, Now + 10, issued: 400)!.Value;
        Assert.Equal("cap_exceeded", cap.Code);
        Assert.StartsWith("amount:", cap.Message, StringComparison.Ordinal);
        Assert.Contains("at most 1.00 more", cap.Message, StringComparison.Ordinal);
        Assert.Null(Issue(100, Now + 10, issued: 400));
        Assert.Equal("cap_exceeded", Issue(long.MaxValue, Now + 10, issued: 400)!.Value.Code); // no overflow
    }

    [Fact]
    public void TakeOrPay_ChargesTheWholeValue_OrTheElapsedShareWhenEndedEarly_RoundedHalfUp()
    {
        Assert.Equal(1000, Contracts.Charge(1000, 0, 100, null));
        Assert.Equal(1000, Contracts.Charge(1000, 0, 100, 150));
        Assert.Equal(250, Contracts.Charge(1000, 0, 100, 25));
        Assert.Equal(0, Contracts.Charge(1000, 50, 100, 10));   // withdrawn before it began
        Assert.Equal(2, Contracts.Charge(3, 0, 200, 100));      // 3 × 100 / 200 = 1.5, half up → 2
        Assert.Equal(1, Contracts.Charge(3, 0, 300, 100));      // exactly 1
    }

    [Fact]
    public void Offers_NeverOversellAGroup_AndOnlyAStandingProposalIsAnswered_BeforeItsWindow()
    {
        Assert.Null(Contracts.OverCapacity("g", 4, 3, 1));
        var over = Contracts.OverCapacity("g", 4, 3, 2)!.Value;
        Assert.Equal("over_capacity", over.Code);
        Assert.Contains("at most 1 more", over.Message, StringComparison.Ordinal);
        Assert.Null(Contracts.AnswerRefusal(1, Consents.Proposed, withdrawn: false, accept: true, validFromMs: Now + 1, Now));
        Assert.Null(Contracts.AnswerRefusal(1, Consents.Proposed, withdrawn: false, accept: false, validFromMs: Now - 1, Now)); // declining late is fine
        Assert.Equal("window_started", Contracts.AnswerRefusal(1, Consents.Proposed, false, true, Now, Now)!.Value.Code);
        Assert.Equal("already_answered", Contracts.AnswerRefusal(1, Consents.Accepted, false, false, Now + 1, Now)!.Value.Code);
        Assert.Contains("withdrawn", Contracts.AnswerRefusal(1, Consents.Proposed, true, true, Now + 1, Now)!.Value.Message, StringComparison.Ordinal);
    }
}
