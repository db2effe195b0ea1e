import FerrySystem

/// Seeded, text-like bytes for `RegionFill.text`: words of a small vocabulary, drawn so that a few are common and
/// most are rare, separated by spaces, with a full stop and a line break now and then. The same seed always
/// gives the same bytes; the content compresses about as well as prose or logs do (zstd level 1 to about a
/// third), unlike `.random`, which does not compress at all.
public struct RegionText {
    private var random: RegionRandom
    private var word: [UInt8] = []
    private var position = 0

    public init(seed: UInt64) {
        random = RegionRandom(state: RegionRandom.mix(seed, 0x7E47))
    }

    /// The next 8 bytes of text, as a little-endian word.
    public mutating func next() -> UInt64 {
        var value: UInt64 = 0
        for shift in stride(from: 0, to: 64, by: 8) {
            if position == word.count { nextWord() }
            value |= UInt64(word[position]) << UInt64(shift)
            position += 1
        }
        return value
    }

    private mutating func nextWord() {
        let draw = random.next()
        // The product of two uniform draws favours small indices: a skewed, Zipf-like choice.
        let count = UInt64(Self.vocabulary.count)
        let index = Int((draw & 0xFFFF) % count * ((draw >> 16 & 0xFFFF) % count) / count)
        word = Self.vocabulary[index]
        switch draw >> 32 & 0x3F {
        case 0: word += Array(".\n".utf8)
        case 1, 2, 3: word += Array(", ".utf8)
        case 4, 5: word += Array(". ".utf8)
        default: word.append(UInt8(ascii: " "))
        }
        position = 0
    }

    private static let vocabulary: [[UInt8]] = """
        the of and to in is that for it as was with be by on not he this are or his from at which but have an \
        they you were her she there one all we their has been would when who will more no if out so said what up \
        its about into than them can only other new some could time these two may then do first any my now such \
        like our over man me even most made after also did many before must through back years where much your way \
        well down should because each just those people how too little state good very make world still own see men \
        work long get here between both life being under never day same another know while last might us great old \
        year off come since against go came right used take three region page memory process migration host link \
        round pause dirty write fault tracker stream frame socket kernel mapping workload owner generation record \
        claim lease digest verify source destination network bandwidth latency buffer cache delta compress thread \
        signal handler error errno report progress request answer header version checksum ledger counter file mount
        """.split(whereSeparator: { $0 == " " || $0 == "\n" }).map { Array($0.utf8) }
}
