/// Who a principal of `identities/allowed_signers` is, from `identities/actors.yaml` on main.
public struct Actor: Sendable, Codable, Equatable {
    public enum Kind: String, Sendable, Codable, CaseIterable { case human, agent }

    public var principal: String
    public var kind: Kind
    public var teams: [String] = []
    public var roles: [String] = []
    /// Principals this actor may act for (`On-Behalf-Of:` trailers).
    public var actsFor: [String] = []

    public init(principal: String, kind: Kind) {
        self.principal = principal
        self.kind = kind
    }
}
