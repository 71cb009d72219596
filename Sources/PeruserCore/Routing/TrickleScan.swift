// When to look again at a request head (or TLS ClientHello) that arrives a few bytes at a time.
//
// A head that did not come at once is consumed as it trickles in. Scanning the whole buffer
// after every packet would cost quadratic work for a client that sends one byte per packet,
// so the buffer is scanned again only when the new bytes can have completed something: the
// request line, the blank line that ends the head, a TLS record of 64 bytes or more, or an
// HTTP/2 frame after the h2c preface (a header block only once it ends; H2Preface refuses more
// than a few other frames); and, whatever came, whenever the buffer has doubled. Each byte is then examined a bounded number
// of times, and a complete head is never left waiting.
public struct TrickleScan: Equatable {
    /// How many bytes the last scan saw (0: none yet).
    public private(set) var scanned = 0
    private var recordEnd = 0
    private var openRecordLength: Int?
    private var sawLineEnd = false
    /// After an h2c preface: where the next HTTP/2 frame starts (0: not there yet).
    private var frameEnd = 0

    public init() {}

    /// Whether `bytes` (everything consumed so far) is worth a full scan now; if so, the
    /// caller scans and this counts it as seen.
    public mutating func worthScanning(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let due = isDue(bytes)
        if due { scanned = bytes.count }
        return due
    }

    private mutating func isDue(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let previous = scanned
        if previous == 0 { return !bytes.isEmpty }
        guard bytes.count > previous else { return false }
        if bytes.count <= 64 || bytes.count >= 2 * previous { return true }
        if bytes[0] == ClientHello.handshakeRecordByte {
            var completed = false
            // The record whose header was read last, once all of it is here.
            if let length = openRecordLength, recordEnd <= bytes.count {
                openRecordLength = nil
                completed = length >= 64
            }
            while openRecordLength == nil && recordEnd + 5 <= bytes.count {
                let length = Int(bytes[recordEnd + 3]) << 8 | Int(bytes[recordEnd + 4])
                recordEnd += 5 + length
                if recordEnd <= bytes.count {
                    completed = completed || length >= 64
                } else {
                    openRecordLength = length
                }
            }
            return completed
        }
        if frameEnd > 0 || (bytes.count >= H2Preface.preface.count && bytes.starts(with: H2Preface.preface)) {
            return http2FrameCompleted(bytes)
        }
        let lineFeed = UInt8(ascii: "\n"), carriageReturn = UInt8(ascii: "\r")
        var last = bytes[previous - 1], beforeLast: UInt8 = previous >= 2 ? bytes[previous - 2] : 0
        for index in previous..<bytes.count {
            let byte = bytes[index]
            if byte == lineFeed {
                if !sawLineEnd {  // the request line is complete
                    sawLineEnd = true
                    return true
                }
                if last == lineFeed || (last == carriageReturn && beforeLast == lineFeed) { return true }
            }
            beforeLast = last
            last = byte
        }
        return false
    }

    private mutating func http2FrameCompleted(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if frameEnd == 0 { frameEnd = H2Preface.preface.count }
        var completed = false
        while frameEnd + 9 <= bytes.count {
            let length = Int(bytes[frameEnd]) << 16 | Int(bytes[frameEnd + 1]) << 8 | Int(bytes[frameEnd + 2])
            if length > H2Preface.largestFrame { return true }  // refused at once
            guard frameEnd + 9 + length <= bytes.count else { break }
            let type = bytes[frameEnd + 3], flags = bytes[frameEnd + 4]
            frameEnd += 9 + length
            let headerBlock = type == H2Preface.headersType || type == H2Preface.continuationType
            completed = completed || !headerBlock || flags & H2Preface.endHeaders != 0
        }
        return completed
    }
}
