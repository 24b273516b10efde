#include <increlora/tasks/squad.hpp>

#include <increlora/errors.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <numeric>
#include <set>
#include <sstream>

#include <sys/stat.h>
#include <unistd.h>

namespace increlora::squad {
namespace {

using json = nlohmann::json;

// POSIX stat rather than std::filesystem: the LibTorch of the PyPI wheel exports its own std::filesystem
// functions, built against another libstdc++, and calling them crashes (see src/io.hpp).
bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// ----- Unicode tables ------------------------------------------------------------------------------------

struct LowerRange {
  char32_t first, last;
  int32_t delta, stride;
};
struct CodeRange {
  char32_t first, last;
};

// Python 3.11's str.lower, one code point to one (Unicode 14.0.0): code points first..last, every `stride`-th,
// map to themselves + delta. (U+0130 maps to two code points and is handled in lower_into.)
constexpr LowerRange kLowerRanges[] = {
    {0x41, 0x5A, 32, 1}, {0xC0, 0xD6, 32, 1}, {0xD8, 0xDE, 32, 1}, {0x100, 0x12E, 1, 2},
    {0x132, 0x136, 1, 2}, {0x139, 0x147, 1, 2}, {0x14A, 0x176, 1, 2}, {0x178, 0x178, -121, 1},
    {0x179, 0x17D, 1, 2}, {0x181, 0x181, 210, 1}, {0x182, 0x184, 1, 2}, {0x186, 0x186, 206, 1},
    {0x187, 0x187, 1, 1}, {0x189, 0x18A, 205, 1}, {0x18B, 0x18B, 1, 1}, {0x18E, 0x18E, 79, 1},
    {0x18F, 0x18F, 202, 1}, {0x190, 0x190, 203, 1}, {0x191, 0x191, 1, 1}, {0x193, 0x193, 205, 1},
    {0x194, 0x194, 207, 1}, {0x196, 0x196, 211, 1}, {0x197, 0x197, 209, 1}, {0x198, 0x198, 1, 1},
    {0x19C, 0x19C, 211, 1}, {0x19D, 0x19D, 213, 1}, {0x19F, 0x19F, 214, 1}, {0x1A0, 0x1A4, 1, 2},
    {0x1A6, 0x1A6, 218, 1}, {0x1A7, 0x1A7, 1, 1}, {0x1A9, 0x1A9, 218, 1}, {0x1AC, 0x1AC, 1, 1},
    {0x1AE, 0x1AE, 218, 1}, {0x1AF, 0x1AF, 1, 1}, {0x1B1, 0x1B2, 217, 1}, {0x1B3, 0x1B5, 1, 2},
    {0x1B7, 0x1B7, 219, 1}, {0x1B8, 0x1B8, 1, 1}, {0x1BC, 0x1BC, 1, 1}, {0x1C4, 0x1C4, 2, 1},
    {0x1C5, 0x1C5, 1, 1}, {0x1C7, 0x1C7, 2, 1}, {0x1C8, 0x1C8, 1, 1}, {0x1CA, 0x1CA, 2, 1},
    {0x1CB, 0x1DB, 1, 2}, {0x1DE, 0x1EE, 1, 2}, {0x1F1, 0x1F1, 2, 1}, {0x1F2, 0x1F4, 1, 2},
    {0x1F6, 0x1F6, -97, 1}, {0x1F7, 0x1F7, -56, 1}, {0x1F8, 0x21E, 1, 2}, {0x220, 0x220, -130, 1},
    {0x222, 0x232, 1, 2}, {0x23A, 0x23A, 10795, 1}, {0x23B, 0x23B, 1, 1}, {0x23D, 0x23D, -163, 1},
    {0x23E, 0x23E, 10792, 1}, {0x241, 0x241, 1, 1}, {0x243, 0x243, -195, 1}, {0x244, 0x244, 69, 1},
    {0x245, 0x245, 71, 1}, {0x246, 0x24E, 1, 2}, {0x370, 0x372, 1, 2}, {0x376, 0x376, 1, 1},
    {0x37F, 0x37F, 116, 1}, {0x386, 0x386, 38, 1}, {0x388, 0x38A, 37, 1}, {0x38C, 0x38C, 64, 1},
    {0x38E, 0x38F, 63, 1}, {0x391, 0x3A1, 32, 1}, {0x3A3, 0x3AB, 32, 1}, {0x3CF, 0x3CF, 8, 1},
    {0x3D8, 0x3EE, 1, 2}, {0x3F4, 0x3F4, -60, 1}, {0x3F7, 0x3F7, 1, 1}, {0x3F9, 0x3F9, -7, 1},
    {0x3FA, 0x3FA, 1, 1}, {0x3FD, 0x3FF, -130, 1}, {0x400, 0x40F, 80, 1}, {0x410, 0x42F, 32, 1},
    {0x460, 0x480, 1, 2}, {0x48A, 0x4BE, 1, 2}, {0x4C0, 0x4C0, 15, 1}, {0x4C1, 0x4CD, 1, 2},
    {0x4D0, 0x52E, 1, 2}, {0x531, 0x556, 48, 1}, {0x10A0, 0x10C5, 7264, 1}, {0x10C7, 0x10C7, 7264, 1},
    {0x10CD, 0x10CD, 7264, 1}, {0x13A0, 0x13EF, 38864, 1}, {0x13F0, 0x13F5, 8, 1}, {0x1C90, 0x1CBA, -3008, 1},
    {0x1CBD, 0x1CBF, -3008, 1}, {0x1E00, 0x1E94, 1, 2}, {0x1E9E, 0x1E9E, -7615, 1}, {0x1EA0, 0x1EFE, 1, 2},
    {0x1F08, 0x1F0F, -8, 1}, {0x1F18, 0x1F1D, -8, 1}, {0x1F28, 0x1F2F, -8, 1}, {0x1F38, 0x1F3F, -8, 1},
    {0x1F48, 0x1F4D, -8, 1}, {0x1F59, 0x1F5F, -8, 2}, {0x1F68, 0x1F6F, -8, 1}, {0x1F88, 0x1F8F, -8, 1},
    {0x1F98, 0x1F9F, -8, 1}, {0x1FA8, 0x1FAF, -8, 1}, {0x1FB8, 0x1FB9, -8, 1}, {0x1FBA, 0x1FBB, -74, 1},
    {0x1FBC, 0x1FBC, -9, 1}, {0x1FC8, 0x1FCB, -86, 1}, {0x1FCC, 0x1FCC, -9, 1}, {0x1FD8, 0x1FD9, -8, 1},
    {0x1FDA, 0x1FDB, -100, 1}, {0x1FE8, 0x1FE9, -8, 1}, {0x1FEA, 0x1FEB, -112, 1}, {0x1FEC, 0x1FEC, -7, 1},
    {0x1FF8, 0x1FF9, -128, 1}, {0x1FFA, 0x1FFB, -126, 1}, {0x1FFC, 0x1FFC, -9, 1}, {0x2126, 0x2126, -7517, 1},
    {0x212A, 0x212A, -8383, 1}, {0x212B, 0x212B, -8262, 1}, {0x2132, 0x2132, 28, 1}, {0x2160, 0x216F, 16, 1},
    {0x2183, 0x2183, 1, 1}, {0x24B6, 0x24CF, 26, 1}, {0x2C00, 0x2C2F, 48, 1}, {0x2C60, 0x2C60, 1, 1},
    {0x2C62, 0x2C62, -10743, 1}, {0x2C63, 0x2C63, -3814, 1}, {0x2C64, 0x2C64, -10727, 1}, {0x2C67, 0x2C6B, 1, 2},
    {0x2C6D, 0x2C6D, -10780, 1}, {0x2C6E, 0x2C6E, -10749, 1}, {0x2C6F, 0x2C6F, -10783, 1}, {0x2C70, 0x2C70, -10782, 1},
    {0x2C72, 0x2C72, 1, 1}, {0x2C75, 0x2C75, 1, 1}, {0x2C7E, 0x2C7F, -10815, 1}, {0x2C80, 0x2CE2, 1, 2},
    {0x2CEB, 0x2CED, 1, 2}, {0x2CF2, 0x2CF2, 1, 1}, {0xA640, 0xA66C, 1, 2}, {0xA680, 0xA69A, 1, 2},
    {0xA722, 0xA72E, 1, 2}, {0xA732, 0xA76E, 1, 2}, {0xA779, 0xA77B, 1, 2}, {0xA77D, 0xA77D, -35332, 1},
    {0xA77E, 0xA786, 1, 2}, {0xA78B, 0xA78B, 1, 1}, {0xA78D, 0xA78D, -42280, 1}, {0xA790, 0xA792, 1, 2},
    {0xA796, 0xA7A8, 1, 2}, {0xA7AA, 0xA7AA, -42308, 1}, {0xA7AB, 0xA7AB, -42319, 1}, {0xA7AC, 0xA7AC, -42315, 1},
    {0xA7AD, 0xA7AD, -42305, 1}, {0xA7AE, 0xA7AE, -42308, 1}, {0xA7B0, 0xA7B0, -42258, 1}, {0xA7B1, 0xA7B1, -42282, 1},
    {0xA7B2, 0xA7B2, -42261, 1}, {0xA7B3, 0xA7B3, 928, 1}, {0xA7B4, 0xA7C2, 1, 2}, {0xA7C4, 0xA7C4, -48, 1},
    {0xA7C5, 0xA7C5, -42307, 1}, {0xA7C6, 0xA7C6, -35384, 1}, {0xA7C7, 0xA7C9, 1, 2}, {0xA7D0, 0xA7D0, 1, 1},
    {0xA7D6, 0xA7D8, 1, 2}, {0xA7F5, 0xA7F5, 1, 1}, {0xFF21, 0xFF3A, 32, 1}, {0x10400, 0x10427, 40, 1},
    {0x104B0, 0x104D3, 40, 1}, {0x10570, 0x1057A, 39, 1}, {0x1057C, 0x1058A, 39, 1}, {0x1058C, 0x10592, 39, 1},
    {0x10594, 0x10595, 39, 1}, {0x10C80, 0x10CB2, 64, 1}, {0x118A0, 0x118BF, 32, 1}, {0x16E40, 0x16E5F, 32, 1},
    {0x1E900, 0x1E921, 34, 1},
};
// The characters of Python 3.11's Unicode regex \w (str.isalnum() or '_'), as closed ranges.
constexpr CodeRange kWordRanges[] = {
    {0x30, 0x39}, {0x41, 0x5A}, {0x5F, 0x5F}, {0x61, 0x7A}, {0xAA, 0xAA}, {0xB2, 0xB3},
    {0xB5, 0xB5}, {0xB9, 0xBA}, {0xBC, 0xBE}, {0xC0, 0xD6}, {0xD8, 0xF6}, {0xF8, 0x2C1},
    {0x2C6, 0x2D1}, {0x2E0, 0x2E4}, {0x2EC, 0x2EC}, {0x2EE, 0x2EE}, {0x370, 0x374}, {0x376, 0x377},
    {0x37A, 0x37D}, {0x37F, 0x37F}, {0x386, 0x386}, {0x388, 0x38A}, {0x38C, 0x38C}, {0x38E, 0x3A1},
    {0x3A3, 0x3F5}, {0x3F7, 0x481}, {0x48A, 0x52F}, {0x531, 0x556}, {0x559, 0x559}, {0x560, 0x588},
    {0x5D0, 0x5EA}, {0x5EF, 0x5F2}, {0x620, 0x64A}, {0x660, 0x669}, {0x66E, 0x66F}, {0x671, 0x6D3},
    {0x6D5, 0x6D5}, {0x6E5, 0x6E6}, {0x6EE, 0x6FC}, {0x6FF, 0x6FF}, {0x710, 0x710}, {0x712, 0x72F},
    {0x74D, 0x7A5}, {0x7B1, 0x7B1}, {0x7C0, 0x7EA}, {0x7F4, 0x7F5}, {0x7FA, 0x7FA}, {0x800, 0x815},
    {0x81A, 0x81A}, {0x824, 0x824}, {0x828, 0x828}, {0x840, 0x858}, {0x860, 0x86A}, {0x870, 0x887},
    {0x889, 0x88E}, {0x8A0, 0x8C9}, {0x904, 0x939}, {0x93D, 0x93D}, {0x950, 0x950}, {0x958, 0x961},
    {0x966, 0x96F}, {0x971, 0x980}, {0x985, 0x98C}, {0x98F, 0x990}, {0x993, 0x9A8}, {0x9AA, 0x9B0},
    {0x9B2, 0x9B2}, {0x9B6, 0x9B9}, {0x9BD, 0x9BD}, {0x9CE, 0x9CE}, {0x9DC, 0x9DD}, {0x9DF, 0x9E1},
    {0x9E6, 0x9F1}, {0x9F4, 0x9F9}, {0x9FC, 0x9FC}, {0xA05, 0xA0A}, {0xA0F, 0xA10}, {0xA13, 0xA28},
    {0xA2A, 0xA30}, {0xA32, 0xA33}, {0xA35, 0xA36}, {0xA38, 0xA39}, {0xA59, 0xA5C}, {0xA5E, 0xA5E},
    {0xA66, 0xA6F}, {0xA72, 0xA74}, {0xA85, 0xA8D}, {0xA8F, 0xA91}, {0xA93, 0xAA8}, {0xAAA, 0xAB0},
    {0xAB2, 0xAB3}, {0xAB5, 0xAB9}, {0xABD, 0xABD}, {0xAD0, 0xAD0}, {0xAE0, 0xAE1}, {0xAE6, 0xAEF},
    {0xAF9, 0xAF9}, {0xB05, 0xB0C}, {0xB0F, 0xB10}, {0xB13, 0xB28}, {0xB2A, 0xB30}, {0xB32, 0xB33},
    {0xB35, 0xB39}, {0xB3D, 0xB3D}, {0xB5C, 0xB5D}, {0xB5F, 0xB61}, {0xB66, 0xB6F}, {0xB71, 0xB77},
    {0xB83, 0xB83}, {0xB85, 0xB8A}, {0xB8E, 0xB90}, {0xB92, 0xB95}, {0xB99, 0xB9A}, {0xB9C, 0xB9C},
    {0xB9E, 0xB9F}, {0xBA3, 0xBA4}, {0xBA8, 0xBAA}, {0xBAE, 0xBB9}, {0xBD0, 0xBD0}, {0xBE6, 0xBF2},
    {0xC05, 0xC0C}, {0xC0E, 0xC10}, {0xC12, 0xC28}, {0xC2A, 0xC39}, {0xC3D, 0xC3D}, {0xC58, 0xC5A},
    {0xC5D, 0xC5D}, {0xC60, 0xC61}, {0xC66, 0xC6F}, {0xC78, 0xC7E}, {0xC80, 0xC80}, {0xC85, 0xC8C},
    {0xC8E, 0xC90}, {0xC92, 0xCA8}, {0xCAA, 0xCB3}, {0xCB5, 0xCB9}, {0xCBD, 0xCBD}, {0xCDD, 0xCDE},
    {0xCE0, 0xCE1}, {0xCE6, 0xCEF}, {0xCF1, 0xCF2}, {0xD04, 0xD0C}, {0xD0E, 0xD10}, {0xD12, 0xD3A},
    {0xD3D, 0xD3D}, {0xD4E, 0xD4E}, {0xD54, 0xD56}, {0xD58, 0xD61}, {0xD66, 0xD78}, {0xD7A, 0xD7F},
    {0xD85, 0xD96}, {0xD9A, 0xDB1}, {0xDB3, 0xDBB}, {0xDBD, 0xDBD}, {0xDC0, 0xDC6}, {0xDE6, 0xDEF},
    {0xE01, 0xE30}, {0xE32, 0xE33}, {0xE40, 0xE46}, {0xE50, 0xE59}, {0xE81, 0xE82}, {0xE84, 0xE84},
    {0xE86, 0xE8A}, {0xE8C, 0xEA3}, {0xEA5, 0xEA5}, {0xEA7, 0xEB0}, {0xEB2, 0xEB3}, {0xEBD, 0xEBD},
    {0xEC0, 0xEC4}, {0xEC6, 0xEC6}, {0xED0, 0xED9}, {0xEDC, 0xEDF}, {0xF00, 0xF00}, {0xF20, 0xF33},
    {0xF40, 0xF47}, {0xF49, 0xF6C}, {0xF88, 0xF8C}, {0x1000, 0x102A}, {0x103F, 0x1049}, {0x1050, 0x1055},
    {0x105A, 0x105D}, {0x1061, 0x1061}, {0x1065, 0x1066}, {0x106E, 0x1070}, {0x1075, 0x1081}, {0x108E, 0x108E},
    {0x1090, 0x1099}, {0x10A0, 0x10C5}, {0x10C7, 0x10C7}, {0x10CD, 0x10CD}, {0x10D0, 0x10FA}, {0x10FC, 0x1248},
    {0x124A, 0x124D}, {0x1250, 0x1256}, {0x1258, 0x1258}, {0x125A, 0x125D}, {0x1260, 0x1288}, {0x128A, 0x128D},
    {0x1290, 0x12B0}, {0x12B2, 0x12B5}, {0x12B8, 0x12BE}, {0x12C0, 0x12C0}, {0x12C2, 0x12C5}, {0x12C8, 0x12D6},
    {0x12D8, 0x1310}, {0x1312, 0x1315}, {0x1318, 0x135A}, {0x1369, 0x137C}, {0x1380, 0x138F}, {0x13A0, 0x13F5},
    {0x13F8, 0x13FD}, {0x1401, 0x166C}, {0x166F, 0x167F}, {0x1681, 0x169A}, {0x16A0, 0x16EA}, {0x16EE, 0x16F8},
    {0x1700, 0x1711}, {0x171F, 0x1731}, {0x1740, 0x1751}, {0x1760, 0x176C}, {0x176E, 0x1770}, {0x1780, 0x17B3},
    {0x17D7, 0x17D7}, {0x17DC, 0x17DC}, {0x17E0, 0x17E9}, {0x17F0, 0x17F9}, {0x1810, 0x1819}, {0x1820, 0x1878},
    {0x1880, 0x1884}, {0x1887, 0x18A8}, {0x18AA, 0x18AA}, {0x18B0, 0x18F5}, {0x1900, 0x191E}, {0x1946, 0x196D},
    {0x1970, 0x1974}, {0x1980, 0x19AB}, {0x19B0, 0x19C9}, {0x19D0, 0x19DA}, {0x1A00, 0x1A16}, {0x1A20, 0x1A54},
    {0x1A80, 0x1A89}, {0x1A90, 0x1A99}, {0x1AA7, 0x1AA7}, {0x1B05, 0x1B33}, {0x1B45, 0x1B4C}, {0x1B50, 0x1B59},
    {0x1B83, 0x1BA0}, {0x1BAE, 0x1BE5}, {0x1C00, 0x1C23}, {0x1C40, 0x1C49}, {0x1C4D, 0x1C7D}, {0x1C80, 0x1C88},
    {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF}, {0x1CE9, 0x1CEC}, {0x1CEE, 0x1CF3}, {0x1CF5, 0x1CF6}, {0x1CFA, 0x1CFA},
    {0x1D00, 0x1DBF}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D}, {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57},
    {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B}, {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC},
    {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2070, 0x2071}, {0x2074, 0x2079}, {0x207F, 0x2089}, {0x2090, 0x209C},
    {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124},
    {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212A, 0x212D}, {0x212F, 0x2139}, {0x213C, 0x213F}, {0x2145, 0x2149},
    {0x214E, 0x214E}, {0x2150, 0x2189}, {0x2460, 0x249B}, {0x24EA, 0x24FF}, {0x2776, 0x2793}, {0x2C00, 0x2CE4},
    {0x2CEB, 0x2CEE}, {0x2CF2, 0x2CF3}, {0x2CFD, 0x2CFD}, {0x2D00, 0x2D25}, {0x2D27, 0x2D27}, {0x2D2D, 0x2D2D},
    {0x2D30, 0x2D67}, {0x2D6F, 0x2D6F}, {0x2D80, 0x2D96}, {0x2DA0, 0x2DA6}, {0x2DA8, 0x2DAE}, {0x2DB0, 0x2DB6},
    {0x2DB8, 0x2DBE}, {0x2DC0, 0x2DC6}, {0x2DC8, 0x2DCE}, {0x2DD0, 0x2DD6}, {0x2DD8, 0x2DDE}, {0x2E2F, 0x2E2F},
    {0x3005, 0x3007}, {0x3021, 0x3029}, {0x3031, 0x3035}, {0x3038, 0x303C}, {0x3041, 0x3096}, {0x309D, 0x309F},
    {0x30A1, 0x30FA}, {0x30FC, 0x30FF}, {0x3105, 0x312F}, {0x3131, 0x318E}, {0x3192, 0x3195}, {0x31A0, 0x31BF},
    {0x31F0, 0x31FF}, {0x3220, 0x3229}, {0x3248, 0x324F}, {0x3251, 0x325F}, {0x3280, 0x3289}, {0x32B1, 0x32BF},
    {0x3400, 0x4DBF}, {0x4E00, 0xA48C}, {0xA4D0, 0xA4FD}, {0xA500, 0xA60C}, {0xA610, 0xA62B}, {0xA640, 0xA66E},
    {0xA67F, 0xA69D}, {0xA6A0, 0xA6EF}, {0xA717, 0xA71F}, {0xA722, 0xA788}, {0xA78B, 0xA7CA}, {0xA7D0, 0xA7D1},
    {0xA7D3, 0xA7D3}, {0xA7D5, 0xA7D9}, {0xA7F2, 0xA801}, {0xA803, 0xA805}, {0xA807, 0xA80A}, {0xA80C, 0xA822},
    {0xA830, 0xA835}, {0xA840, 0xA873}, {0xA882, 0xA8B3}, {0xA8D0, 0xA8D9}, {0xA8F2, 0xA8F7}, {0xA8FB, 0xA8FB},
    {0xA8FD, 0xA8FE}, {0xA900, 0xA925}, {0xA930, 0xA946}, {0xA960, 0xA97C}, {0xA984, 0xA9B2}, {0xA9CF, 0xA9D9},
    {0xA9E0, 0xA9E4}, {0xA9E6, 0xA9FE}, {0xAA00, 0xAA28}, {0xAA40, 0xAA42}, {0xAA44, 0xAA4B}, {0xAA50, 0xAA59},
    {0xAA60, 0xAA76}, {0xAA7A, 0xAA7A}, {0xAA7E, 0xAAAF}, {0xAAB1, 0xAAB1}, {0xAAB5, 0xAAB6}, {0xAAB9, 0xAABD},
    {0xAAC0, 0xAAC0}, {0xAAC2, 0xAAC2}, {0xAADB, 0xAADD}, {0xAAE0, 0xAAEA}, {0xAAF2, 0xAAF4}, {0xAB01, 0xAB06},
    {0xAB09, 0xAB0E}, {0xAB11, 0xAB16}, {0xAB20, 0xAB26}, {0xAB28, 0xAB2E}, {0xAB30, 0xAB5A}, {0xAB5C, 0xAB69},
    {0xAB70, 0xABE2}, {0xABF0, 0xABF9}, {0xAC00, 0xD7A3}, {0xD7B0, 0xD7C6}, {0xD7CB, 0xD7FB}, {0xF900, 0xFA6D},
    {0xFA70, 0xFAD9}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFB1D, 0xFB1D}, {0xFB1F, 0xFB28}, {0xFB2A, 0xFB36},
    {0xFB38, 0xFB3C}, {0xFB3E, 0xFB3E}, {0xFB40, 0xFB41}, {0xFB43, 0xFB44}, {0xFB46, 0xFBB1}, {0xFBD3, 0xFD3D},
    {0xFD50, 0xFD8F}, {0xFD92, 0xFDC7}, {0xFDF0, 0xFDFB}, {0xFE70, 0xFE74}, {0xFE76, 0xFEFC}, {0xFF10, 0xFF19},
    {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A}, {0xFF66, 0xFFBE}, {0xFFC2, 0xFFC7}, {0xFFCA, 0xFFCF}, {0xFFD2, 0xFFD7},
    {0xFFDA, 0xFFDC}, {0x10000, 0x1000B}, {0x1000D, 0x10026}, {0x10028, 0x1003A}, {0x1003C, 0x1003D}, {0x1003F, 0x1004D},
    {0x10050, 0x1005D}, {0x10080, 0x100FA}, {0x10107, 0x10133}, {0x10140, 0x10178}, {0x1018A, 0x1018B}, {0x10280, 0x1029C},
    {0x102A0, 0x102D0}, {0x102E1, 0x102FB}, {0x10300, 0x10323}, {0x1032D, 0x1034A}, {0x10350, 0x10375}, {0x10380, 0x1039D},
    {0x103A0, 0x103C3}, {0x103C8, 0x103CF}, {0x103D1, 0x103D5}, {0x10400, 0x1049D}, {0x104A0, 0x104A9}, {0x104B0, 0x104D3},
    {0x104D8, 0x104FB}, {0x10500, 0x10527}, {0x10530, 0x10563}, {0x10570, 0x1057A}, {0x1057C, 0x1058A}, {0x1058C, 0x10592},
    {0x10594, 0x10595}, {0x10597, 0x105A1}, {0x105A3, 0x105B1}, {0x105B3, 0x105B9}, {0x105BB, 0x105BC}, {0x10600, 0x10736},
    {0x10740, 0x10755}, {0x10760, 0x10767}, {0x10780, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA}, {0x10800, 0x10805},
    {0x10808, 0x10808}, {0x1080A, 0x10835}, {0x10837, 0x10838}, {0x1083C, 0x1083C}, {0x1083F, 0x10855}, {0x10858, 0x10876},
    {0x10879, 0x1089E}, {0x108A7, 0x108AF}, {0x108E0, 0x108F2}, {0x108F4, 0x108F5}, {0x108FB, 0x1091B}, {0x10920, 0x10939},
    {0x10980, 0x109B7}, {0x109BC, 0x109CF}, {0x109D2, 0x10A00}, {0x10A10, 0x10A13}, {0x10A15, 0x10A17}, {0x10A19, 0x10A35},
    {0x10A40, 0x10A48}, {0x10A60, 0x10A7E}, {0x10A80, 0x10A9F}, {0x10AC0, 0x10AC7}, {0x10AC9, 0x10AE4}, {0x10AEB, 0x10AEF},
    {0x10B00, 0x10B35}, {0x10B40, 0x10B55}, {0x10B58, 0x10B72}, {0x10B78, 0x10B91}, {0x10BA9, 0x10BAF}, {0x10C00, 0x10C48},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x10CFA, 0x10D23}, {0x10D30, 0x10D39}, {0x10E60, 0x10E7E}, {0x10E80, 0x10EA9},
    {0x10EB0, 0x10EB1}, {0x10F00, 0x10F27}, {0x10F30, 0x10F45}, {0x10F51, 0x10F54}, {0x10F70, 0x10F81}, {0x10FB0, 0x10FCB},
    {0x10FE0, 0x10FF6}, {0x11003, 0x11037}, {0x11052, 0x1106F}, {0x11071, 0x11072}, {0x11075, 0x11075}, {0x11083, 0x110AF},
    {0x110D0, 0x110E8}, {0x110F0, 0x110F9}, {0x11103, 0x11126}, {0x11136, 0x1113F}, {0x11144, 0x11144}, {0x11147, 0x11147},
    {0x11150, 0x11172}, {0x11176, 0x11176}, {0x11183, 0x111B2}, {0x111C1, 0x111C4}, {0x111D0, 0x111DA}, {0x111DC, 0x111DC},
    {0x111E1, 0x111F4}, {0x11200, 0x11211}, {0x11213, 0x1122B}, {0x11280, 0x11286}, {0x11288, 0x11288}, {0x1128A, 0x1128D},
    {0x1128F, 0x1129D}, {0x1129F, 0x112A8}, {0x112B0, 0x112DE}, {0x112F0, 0x112F9}, {0x11305, 0x1130C}, {0x1130F, 0x11310},
    {0x11313, 0x11328}, {0x1132A, 0x11330}, {0x11332, 0x11333}, {0x11335, 0x11339}, {0x1133D, 0x1133D}, {0x11350, 0x11350},
    {0x1135D, 0x11361}, {0x11400, 0x11434}, {0x11447, 0x1144A}, {0x11450, 0x11459}, {0x1145F, 0x11461}, {0x11480, 0x114AF},
    {0x114C4, 0x114C5}, {0x114C7, 0x114C7}, {0x114D0, 0x114D9}, {0x11580, 0x115AE}, {0x115D8, 0x115DB}, {0x11600, 0x1162F},
    {0x11644, 0x11644}, {0x11650, 0x11659}, {0x11680, 0x116AA}, {0x116B8, 0x116B8}, {0x116C0, 0x116C9}, {0x11700, 0x1171A},
    {0x11730, 0x1173B}, {0x11740, 0x11746}, {0x11800, 0x1182B}, {0x118A0, 0x118F2}, {0x118FF, 0x11906}, {0x11909, 0x11909},
    {0x1190C, 0x11913}, {0x11915, 0x11916}, {0x11918, 0x1192F}, {0x1193F, 0x1193F}, {0x11941, 0x11941}, {0x11950, 0x11959},
    {0x119A0, 0x119A7}, {0x119AA, 0x119D0}, {0x119E1, 0x119E1}, {0x119E3, 0x119E3}, {0x11A00, 0x11A00}, {0x11A0B, 0x11A32},
    {0x11A3A, 0x11A3A}, {0x11A50, 0x11A50}, {0x11A5C, 0x11A89}, {0x11A9D, 0x11A9D}, {0x11AB0, 0x11AF8}, {0x11C00, 0x11C08},
    {0x11C0A, 0x11C2E}, {0x11C40, 0x11C40}, {0x11C50, 0x11C6C}, {0x11C72, 0x11C8F}, {0x11D00, 0x11D06}, {0x11D08, 0x11D09},
    {0x11D0B, 0x11D30}, {0x11D46, 0x11D46}, {0x11D50, 0x11D59}, {0x11D60, 0x11D65}, {0x11D67, 0x11D68}, {0x11D6A, 0x11D89},
    {0x11D98, 0x11D98}, {0x11DA0, 0x11DA9}, {0x11EE0, 0x11EF2}, {0x11FB0, 0x11FB0}, {0x11FC0, 0x11FD4}, {0x12000, 0x12399},
    {0x12400, 0x1246E}, {0x12480, 0x12543}, {0x12F90, 0x12FF0}, {0x13000, 0x1342E}, {0x14400, 0x14646}, {0x16800, 0x16A38},
    {0x16A40, 0x16A5E}, {0x16A60, 0x16A69}, {0x16A70, 0x16ABE}, {0x16AC0, 0x16AC9}, {0x16AD0, 0x16AED}, {0x16B00, 0x16B2F},
    {0x16B40, 0x16B43}, {0x16B50, 0x16B59}, {0x16B5B, 0x16B61}, {0x16B63, 0x16B77}, {0x16B7D, 0x16B8F}, {0x16E40, 0x16E96},
    {0x16F00, 0x16F4A}, {0x16F50, 0x16F50}, {0x16F93, 0x16F9F}, {0x16FE0, 0x16FE1}, {0x16FE3, 0x16FE3}, {0x17000, 0x187F7},
    {0x18800, 0x18CD5}, {0x18D00, 0x18D08}, {0x1AFF0, 0x1AFF3}, {0x1AFF5, 0x1AFFB}, {0x1AFFD, 0x1AFFE}, {0x1B000, 0x1B122},
    {0x1B150, 0x1B152}, {0x1B164, 0x1B167}, {0x1B170, 0x1B2FB}, {0x1BC00, 0x1BC6A}, {0x1BC70, 0x1BC7C}, {0x1BC80, 0x1BC88},
    {0x1BC90, 0x1BC99}, {0x1D2E0, 0x1D2F3}, {0x1D360, 0x1D378}, {0x1D400, 0x1D454}, {0x1D456, 0x1D49C}, {0x1D49E, 0x1D49F},
    {0x1D4A2, 0x1D4A2}, {0x1D4A5, 0x1D4A6}, {0x1D4A9, 0x1D4AC}, {0x1D4AE, 0x1D4B9}, {0x1D4BB, 0x1D4BB}, {0x1D4BD, 0x1D4C3},
    {0x1D4C5, 0x1D505}, {0x1D507, 0x1D50A}, {0x1D50D, 0x1D514}, {0x1D516, 0x1D51C}, {0x1D51E, 0x1D539}, {0x1D53B, 0x1D53E},
    {0x1D540, 0x1D544}, {0x1D546, 0x1D546}, {0x1D54A, 0x1D550}, {0x1D552, 0x1D6A5}, {0x1D6A8, 0x1D6C0}, {0x1D6C2, 0x1D6DA},
    {0x1D6DC, 0x1D6FA}, {0x1D6FC, 0x1D714}, {0x1D716, 0x1D734}, {0x1D736, 0x1D74E}, {0x1D750, 0x1D76E}, {0x1D770, 0x1D788},
    {0x1D78A, 0x1D7A8}, {0x1D7AA, 0x1D7C2}, {0x1D7C4, 0x1D7CB}, {0x1D7CE, 0x1D7FF}, {0x1DF00, 0x1DF1E}, {0x1E100, 0x1E12C},
    {0x1E137, 0x1E13D}, {0x1E140, 0x1E149}, {0x1E14E, 0x1E14E}, {0x1E290, 0x1E2AD}, {0x1E2C0, 0x1E2EB}, {0x1E2F0, 0x1E2F9},
    {0x1E7E0, 0x1E7E6}, {0x1E7E8, 0x1E7EB}, {0x1E7ED, 0x1E7EE}, {0x1E7F0, 0x1E7FE}, {0x1E800, 0x1E8C4}, {0x1E8C7, 0x1E8CF},
    {0x1E900, 0x1E943}, {0x1E94B, 0x1E94B}, {0x1E950, 0x1E959}, {0x1EC71, 0x1ECAB}, {0x1ECAD, 0x1ECAF}, {0x1ECB1, 0x1ECB4},
    {0x1ED01, 0x1ED2D}, {0x1ED2F, 0x1ED3D}, {0x1EE00, 0x1EE03}, {0x1EE05, 0x1EE1F}, {0x1EE21, 0x1EE22}, {0x1EE24, 0x1EE24},
    {0x1EE27, 0x1EE27}, {0x1EE29, 0x1EE32}, {0x1EE34, 0x1EE37}, {0x1EE39, 0x1EE39}, {0x1EE3B, 0x1EE3B}, {0x1EE42, 0x1EE42},
    {0x1EE47, 0x1EE47}, {0x1EE49, 0x1EE49}, {0x1EE4B, 0x1EE4B}, {0x1EE4D, 0x1EE4F}, {0x1EE51, 0x1EE52}, {0x1EE54, 0x1EE54},
    {0x1EE57, 0x1EE57}, {0x1EE59, 0x1EE59}, {0x1EE5B, 0x1EE5B}, {0x1EE5D, 0x1EE5D}, {0x1EE5F, 0x1EE5F}, {0x1EE61, 0x1EE62},
    {0x1EE64, 0x1EE64}, {0x1EE67, 0x1EE6A}, {0x1EE6C, 0x1EE72}, {0x1EE74, 0x1EE77}, {0x1EE79, 0x1EE7C}, {0x1EE7E, 0x1EE7E},
    {0x1EE80, 0x1EE89}, {0x1EE8B, 0x1EE9B}, {0x1EEA1, 0x1EEA3}, {0x1EEA5, 0x1EEA9}, {0x1EEAB, 0x1EEBB}, {0x1F100, 0x1F10C},
    {0x1FBF0, 0x1FBF9}, {0x20000, 0x2A6DF}, {0x2A700, 0x2B738}, {0x2B740, 0x2B81D}, {0x2B820, 0x2CEA1}, {0x2CEB0, 0x2EBE0},
    {0x2F800, 0x2FA1D}, {0x30000, 0x3134A},
};

char32_t lower_one(char32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  const auto it = std::upper_bound(std::begin(kLowerRanges), std::end(kLowerRanges), cp,
                                   [](char32_t c, const LowerRange& r) { return c < r.first; });
  if (it == std::begin(kLowerRanges)) return cp;
  const auto& r = *std::prev(it);
  if (cp > r.last || (cp - r.first) % static_cast<char32_t>(r.stride) != 0) return cp;
  return static_cast<char32_t>(static_cast<int64_t>(cp) + r.delta);
}

bool is_word(char32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z') || cp == '_';
  const auto it = std::upper_bound(std::begin(kWordRanges), std::end(kWordRanges), cp,
                                   [](char32_t c, const CodeRange& r) { return c < r.first; });
  return it != std::begin(kWordRanges) && cp <= std::prev(it)->last;
}

// Python's str.isspace, which str.split() splits on.
bool is_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// Python's string.punctuation (ASCII only).
bool is_ascii_punctuation(char32_t cp) {
  static const std::u32string punctuation = U"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  return cp < 0x80 && punctuation.find(cp) != std::u32string::npos;
}

// ----- UTF-8 ---------------------------------------------------------------------------------------------

bool is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    char32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      ok = is_continuation(c);
      cp = (cp << 6) | (c & 0x3F);
    }
    if (!ok) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += n;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ----- normalize_answer's steps --------------------------------------------------------------------------

// What Python's final-sigma rule skips and what it looks for, approximated: combining marks and apostrophes
// are skipped; a letter is any \w character but digits and '_'.
bool sigma_ignorable(char32_t cp) {
  return (cp >= 0x300 && cp <= 0x36F) || cp == '\'' || cp == '.' || cp == ':' || cp == 0xB7 || cp == 0x2018 ||
         cp == 0x2019;
}
bool sigma_cased(char32_t cp) { return is_word(cp) && !(cp >= '0' && cp <= '9') && cp != '_'; }

bool is_final_sigma(const std::u32string& s, size_t i) {
  size_t j = i;
  bool before = false;
  while (j > 0) {
    --j;
    if (sigma_ignorable(s[j])) continue;
    before = sigma_cased(s[j]);
    break;
  }
  if (!before) return false;
  for (size_t k = i + 1; k < s.size(); ++k) {
    if (sigma_ignorable(s[k])) continue;
    return !sigma_cased(s[k]);
  }
  return true;
}

std::u32string lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == 0x130) {  // İ → i + combining dot above, Python's only one-to-two lowercase mapping
      out += U'i';
      out += char32_t{0x307};
    } else if (s[i] == 0x3A3) {
      out += is_final_sigma(s, i) ? char32_t{0x3C2} : char32_t{0x3C3};
    } else {
      out += lower_one(s[i]);
    }
  }
  return out;
}

std::u32string remove_punctuation(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (const auto c : s)
    if (!is_ascii_punctuation(c)) out += c;
  return out;
}

// re.sub(r"\b(a|an|the)\b", " ", s): a maximal run of word characters that is exactly a, an or the.
std::u32string remove_articles(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (!is_word(s[i])) {
      out += s[i++];
      continue;
    }
    size_t j = i;
    while (j < s.size() && is_word(s[j])) ++j;
    const std::u32string word = s.substr(i, j - i);
    if (word == U"a" || word == U"an" || word == U"the") {
      out += U' ';
    } else {
      out += word;
    }
    i = j;
  }
  return out;
}

std::vector<std::string> split_spaces(const std::u32string& s) {
  std::vector<std::string> words;
  std::string current;
  bool in_word = false;
  for (const auto c : s) {
    if (is_space(c)) {
      if (in_word) words.push_back(std::move(current)), current.clear();
      in_word = false;
    } else {
      append_utf8(current, c);
      in_word = true;
    }
  }
  if (in_word) words.push_back(std::move(current));
  return words;
}

std::vector<std::string> normalized_tokens(const std::string& text) {
  return split_spaces(remove_articles(remove_punctuation(lower(decode_utf8(text)))));
}

// ----- files ---------------------------------------------------------------------------------------------

// As run_qa writes its files: indented by 4 (2 for the metrics, as evaluate-v2.0.py's --out-file has none),
// with invalid UTF-8 in a caller's text replaced rather than thrown from nlohmann's dump.
std::string dump(const nlohmann::ordered_json& j, int indent = 4) {
  return j.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

void write_whole(const std::string& path, const std::string& text) {
  const auto tmp = path + ".tmp-" + std::to_string(::getpid());
  bool ok;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    ok = static_cast<bool>(out);
  }
  if (ok) ok = std::rename(tmp.c_str(), path.c_str()) == 0;
  if (!ok) std::remove(tmp.c_str());
  INCRELORA_CHECK(ok, "cannot write '", path,
                  "'; check that its folder exists and is writable (and the disk not full).");
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  INCRELORA_CHECK(in.good(), "cannot open the SQuAD file '", path, "'; give a SQuAD v2.0 JSON file (train-v2.0.json, ",
                  "dev-v2.0.json) or JSON lines, or the folder holding them.");
  std::ostringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);
  return text;
}

// ----- reading -------------------------------------------------------------------------------------------

// Where a field is, for messages: "<file>: question '<id>'" or "<file>: data[0].paragraphs[2]".
const json& field(const json& object, const char* name, const std::string& where) {
  INCRELORA_CHECK(object.is_object(), where, ": expected a JSON object, found ", object.type_name(), ".");
  const auto it = object.find(name);
  INCRELORA_CHECK(it != object.end(), where, ": the field \"", name, "\" is missing; is this a SQuAD file?");
  return *it;
}

std::string string_field(const json& object, const char* name, const std::string& where) {
  const auto& v = field(object, name, where);
  INCRELORA_CHECK(v.is_string(), where, ": the field \"", name, "\" should be a string, found ", v.type_name(), ".");
  return v.get<std::string>();
}

std::string optional_string(const json& object, const char* name, const std::string& where) {
  if (!object.is_object() || !object.contains(name)) return "";
  return string_field(object, name, where);
}

const json& array_field(const json& object, const char* name, const std::string& where) {
  const auto& v = field(object, name, where);
  INCRELORA_CHECK(v.is_array(), where, ": the field \"", name, "\" should be an array, found ", v.type_name(), ".");
  return v;
}

int64_t integer(const json& v, const std::string& what, const std::string& where) {
  INCRELORA_CHECK(v.is_number_integer(), where, ": ", what, " should be an integer, found ", v.type_name(), ".");
  return v.get<int64_t>();
}

// Checks one example's answers against its context and the is_impossible flag, as read_squad documents.
void check_example(const SquadExample& e, const std::optional<bool>& is_impossible, const std::string& where,
                   const std::vector<int64_t>& byte_of, bool check_text) {
  INCRELORA_CHECK(e.answer_texts.size() == e.answer_starts.size(), where, ": ", e.answer_texts.size(),
                  " answer texts but ", e.answer_starts.size(), " answer_start values.");
  if (is_impossible) {
    INCRELORA_CHECK(*is_impossible == e.answer_texts.empty(), where, ": \"is_impossible\" is ",
                    *is_impossible ? "true" : "false", " but \"answers\" has ", e.answer_texts.size(),
                    " entries; an unanswerable question has none, an answerable one at least one.");
  }
  const auto context_length = static_cast<int64_t>(byte_of.size()) - 1;
  for (size_t i = 0; i < e.answer_texts.size(); ++i) {
    const int64_t start = e.answer_starts[i];
    const int64_t end = start + codepoint_length(e.answer_texts[i]);
    INCRELORA_CHECK(start >= 0 && end <= context_length, where, ": answer ", i, " (\"", e.answer_texts[i],
                    "\") has answer_start ", start, " and ends at code point ", end,
                    ", outside the context of ", context_length, " code points.");
    if (!check_text) continue;
    const auto b0 = byte_of[static_cast<size_t>(start)], b1 = byte_of[static_cast<size_t>(end)];
    const auto found = e.context.substr(static_cast<size_t>(b0), static_cast<size_t>(b1 - b0));
    INCRELORA_CHECK(found == e.answer_texts[i], where, ": answer ", i, " is \"", e.answer_texts[i],
                    "\" but the context at answer_start ", start, " reads \"", found,
                    "\" (answer_start counts Unicode code points); fix the file, or read it with "
                    "ReadOptions::check_answer_text off if it is only scored.");
  }
}

void add_example(std::vector<SquadExample>& out, std::set<std::string>& ids, SquadExample e,
                 const std::string& path, const std::string& where) {
  INCRELORA_CHECK(ids.insert(e.id).second, where, ": the id '", e.id, "' appears twice in ", path,
                  "; every question needs its own id.");
  out.push_back(std::move(e));
}

std::vector<SquadExample> read_official(const json& root, const std::string& path, const ReadOptions& options) {
  std::vector<SquadExample> out;
  std::set<std::string> ids;
  const auto& data = array_field(root, "data", path);
  for (size_t a = 0; a < data.size(); ++a) {
    const auto article_where = path + ": data[" + std::to_string(a) + "]";
    const auto title = optional_string(data[a], "title", article_where);
    const auto& paragraphs = array_field(data[a], "paragraphs", article_where);
    for (size_t p = 0; p < paragraphs.size(); ++p) {
      const auto paragraph_where = article_where + ".paragraphs[" + std::to_string(p) + "]";
      const auto context = string_field(paragraphs[p], "context", paragraph_where);
      const auto byte_of = codepoint_byte_offsets(context);
      const auto& qas = array_field(paragraphs[p], "qas", paragraph_where);
      for (size_t q = 0; q < qas.size(); ++q) {
        const auto qa_where = paragraph_where + ".qas[" + std::to_string(q) + "]";
        SquadExample e;
        e.id = string_field(qas[q], "id", qa_where);
        const auto where = path + ": question '" + e.id + "'";
        e.title = title;
        e.context = context;
        e.question = string_field(qas[q], "question", where);
        const auto& answers = array_field(qas[q], "answers", where);
        for (size_t i = 0; i < answers.size(); ++i) {
          const auto answer_where = where + ", answers[" + std::to_string(i) + "]";
          e.answer_texts.push_back(string_field(answers[i], "text", answer_where));
          e.answer_starts.push_back(integer(field(answers[i], "answer_start", answer_where), "\"answer_start\"",
                                            answer_where));
        }
        std::optional<bool> impossible;
        if (qas[q].contains("is_impossible")) {
          const auto& v = qas[q]["is_impossible"];
          INCRELORA_CHECK(v.is_boolean(), where, ": the field \"is_impossible\" should be true or false, found ",
                          v.type_name(), ".");
          impossible = v.get<bool>();
        }
        e.is_impossible = e.answer_texts.empty();
        check_example(e, impossible, where, byte_of, options.check_answer_text);
        add_example(out, ids, std::move(e), path, where);
      }
    }
  }
  return out;
}

SquadExample read_flat(const json& row, const std::string& path, const std::string& line_where,
                       const ReadOptions& options) {
  SquadExample e;
  e.id = string_field(row, "id", line_where);
  const auto where = line_where + " (question '" + e.id + "')";
  e.title = optional_string(row, "title", where);
  e.context = string_field(row, "context", where);
  e.question = string_field(row, "question", where);
  const auto& answers = field(row, "answers", where);
  const auto& texts = array_field(answers, "text", where + ", answers");
  const auto& starts = array_field(answers, "answer_start", where + ", answers");
  for (const auto& t : texts) {
    INCRELORA_CHECK(t.is_string(), where, ": answers.text should hold strings, found ", t.type_name(), ".");
    e.answer_texts.push_back(t.get<std::string>());
  }
  for (const auto& s : starts) e.answer_starts.push_back(integer(s, "answers.answer_start entries", where));
  e.is_impossible = e.answer_texts.empty();
  check_example(e, std::nullopt, where, codepoint_byte_offsets(e.context), options.check_answer_text);
  return e;
}

bool looks_flat(const json& v) { return v.is_object() && v.contains("context") && v.contains("question"); }

std::vector<SquadExample> read_json_lines(const std::string& text, const std::string& path,
                                          const ReadOptions& options) {
  std::vector<SquadExample> out;
  std::set<std::string> ids;
  std::istringstream in(text);
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const auto where = path + ":" + std::to_string(line_no);
    json row;
    try {
      row = json::parse(line);
    } catch (const json::exception& err) {
      INCRELORA_CHECK(false, where, ": not valid JSON (", err.what(),
                      "); a JSON lines file holds one question per line.");
    }
    auto e = read_flat(row, path, where, options);
    add_example(out, ids, std::move(e), path, where);
  }
  return out;
}

// ----- decoding ------------------------------------------------------------------------------------------

// The indices of the n largest values, largest first, ties: the lower index first.
std::vector<int64_t> top_indices(const std::vector<float>& v, int64_t n) {
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  const auto k = std::min<int64_t>(n, static_cast<int64_t>(v.size()));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
    const float va = v[static_cast<size_t>(a)], vb = v[static_cast<size_t>(b)];
    return va > vb || (va == vb && a < b);
  });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

struct Candidate {
  int64_t byte_begin = 0, byte_end = 0;
  float score = 0.0f, start_logit = 0.0f, end_logit = 0.0f;
  bool is_null = false;
};

}  // namespace

// ----- data ----------------------------------------------------------------------------------------------

std::string split_file(const std::string& folder, const std::string& split) {
  if (is_regular_file(folder)) return folder;
  INCRELORA_CHECK(is_directory(folder), "the SQuAD path '", folder, "' is neither a file nor a folder; give ",
                  "the folder holding train-v2.0.json and dev-v2.0.json, or a file.");
  std::string name = split;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  INCRELORA_CHECK(name == "train" || name == "dev" || name == "validation" || name == "eval", "unknown SQuAD split '",
                  split, "'; use train or dev (validation and eval mean dev).");
  if (name != "train") name = "dev";
  std::vector<std::string> candidates{name + "-v2.0.json", name + ".json", name + ".jsonl"};
  if (name == "dev") candidates.insert(candidates.end(), {"validation.json", "validation.jsonl"});
  std::string tried;
  for (const auto& c : candidates) {
    const auto p = folder + (!folder.empty() && folder.back() == '/' ? "" : "/") + c;
    if (is_regular_file(p)) return p;
    tried += (tried.empty() ? "" : ", ") + c;
  }
  INCRELORA_CHECK(false, "the folder '", folder, "' holds no SQuAD ", name, " file; looked for ", tried, ".");
  return {};
}

std::vector<SquadExample> read_squad(const std::string& path, const ReadOptions& options) {
  const auto file = is_directory(path) ? split_file(path, options.split) : path;
  const auto text = read_whole(file);
  std::vector<SquadExample> examples;
  json root;
  std::string whole_error;
  try {
    root = json::parse(text);
  } catch (const json::exception& err) {
    whole_error = err.what();
  }
  if (whole_error.empty()) {
    if (root.is_object() && root.contains("data")) {
      examples = read_official(root, file, options);
    } else {
      INCRELORA_CHECK(looks_flat(root), file, ": neither the official SQuAD layout (an object with \"data\") nor ",
                      "JSON lines of {\"id\", \"context\", \"question\", \"answers\"}.");
      examples = read_json_lines(text, file, options);
    }
  } else {
    // Not one JSON value: JSON lines if its first line is a question, else report the parse error.
    const auto first_line = text.substr(0, text.find('\n'));
    json first;
    try {
      first = json::parse(first_line);
    } catch (const json::exception&) {
    }
    INCRELORA_CHECK(looks_flat(first), file, ": not valid JSON (", whole_error, ").");
    examples = read_json_lines(text, file, options);
  }
  INCRELORA_CHECK(!examples.empty(), file, ": holds no questions.");
  return examples;
}

DatasetCounts count(const std::vector<SquadExample>& examples) {
  DatasetCounts c;
  std::set<std::string> titles;
  for (const auto& e : examples) {
    ++c.questions;
    c.unanswerable += e.is_impossible;
    titles.insert(e.title);
  }
  c.articles = static_cast<int64_t>(titles.size());
  return c;
}

// ----- code points and bytes -----------------------------------------------------------------------------

int64_t codepoint_length(const std::string& utf8) {
  int64_t n = 0;
  for (const char c : utf8) n += !is_continuation(static_cast<unsigned char>(c));
  return n;
}

std::vector<int64_t> codepoint_byte_offsets(const std::string& utf8) {
  std::vector<int64_t> offsets;
  offsets.reserve(utf8.size() + 1);
  for (size_t i = 0; i < utf8.size(); ++i)
    if (!is_continuation(static_cast<unsigned char>(utf8[i]))) offsets.push_back(static_cast<int64_t>(i));
  offsets.push_back(static_cast<int64_t>(utf8.size()));
  return offsets;
}

int64_t codepoint_to_byte(const std::string& utf8, int64_t codepoint_offset) {
  INCRELORA_CHECK(codepoint_offset >= 0, "codepoint_to_byte: the offset ", codepoint_offset, " is negative.");
  int64_t seen = 0;
  for (size_t i = 0; i < utf8.size(); ++i) {
    if (is_continuation(static_cast<unsigned char>(utf8[i]))) continue;
    if (seen == codepoint_offset) return static_cast<int64_t>(i);
    ++seen;
  }
  INCRELORA_CHECK(seen == codepoint_offset, "codepoint_to_byte: the offset ", codepoint_offset,
                  " is past the end of a text of ", seen, " code points.");
  return static_cast<int64_t>(utf8.size());
}

int64_t byte_to_codepoint(const std::string& utf8, int64_t byte_offset) {
  INCRELORA_CHECK(byte_offset >= 0 && byte_offset <= static_cast<int64_t>(utf8.size()),
                  "byte_to_codepoint: the offset ", byte_offset, " is outside a text of ", utf8.size(), " bytes.");
  const auto b = static_cast<size_t>(byte_offset);
  INCRELORA_CHECK(b == utf8.size() || !is_continuation(static_cast<unsigned char>(utf8[b])),
                  "byte_to_codepoint: the offset ", byte_offset, " is inside a multi-byte UTF-8 character.");
  return codepoint_length(utf8.substr(0, b));
}

std::pair<int64_t, int64_t> answer_byte_span(const SquadExample& example, size_t i) {
  INCRELORA_CHECK(i < example.answer_texts.size() && i < example.answer_starts.size(), "answer_byte_span: question '",
                  example.id, "' has ", example.answer_texts.size(), " answers, not ", i + 1, ".");
  const auto begin = codepoint_to_byte(example.context, example.answer_starts[i]);
  return {begin, begin + static_cast<int64_t>(example.answer_texts[i].size())};
}

// ----- metrics -------------------------------------------------------------------------------------------

std::string normalize_answer(const std::string& text) {
  std::string out;
  for (const auto& word : normalized_tokens(text)) out += (out.empty() ? "" : " ") + word;
  return out;
}

double exact_match(const std::string& gold, const std::string& prediction) {
  return normalize_answer(gold) == normalize_answer(prediction) ? 1.0 : 0.0;
}

double token_f1(const std::string& gold, const std::string& prediction) {
  const auto gold_tokens = normalized_tokens(gold), pred_tokens = normalized_tokens(prediction);
  if (gold_tokens.empty() || pred_tokens.empty()) return gold_tokens == pred_tokens ? 1.0 : 0.0;
  std::map<std::string, int64_t> gold_counts;
  for (const auto& t : gold_tokens) ++gold_counts[t];
  int64_t same = 0;
  for (const auto& t : pred_tokens) {
    auto it = gold_counts.find(t);
    if (it != gold_counts.end() && it->second > 0) --it->second, ++same;
  }
  if (same == 0) return 0.0;
  const double precision = 1.0 * static_cast<double>(same) / static_cast<double>(pred_tokens.size());
  const double recall = 1.0 * static_cast<double>(same) / static_cast<double>(gold_tokens.size());
  return (2 * precision * recall) / (precision + recall);
}

namespace {
std::vector<std::string> scored_golds(const std::vector<std::string>& gold_answers) {
  std::vector<std::string> golds;
  for (const auto& g : gold_answers)
    if (!normalize_answer(g).empty()) golds.push_back(g);
  if (golds.empty()) golds.push_back("");
  return golds;
}
}  // namespace

double max_exact_match(const std::vector<std::string>& gold_answers, const std::string& prediction) {
  double best = 0.0;
  for (const auto& g : scored_golds(gold_answers)) best = std::max(best, exact_match(g, prediction));
  return best;
}

double max_token_f1(const std::vector<std::string>& gold_answers, const std::string& prediction) {
  double best = 0.0;
  for (const auto& g : scored_golds(gold_answers)) best = std::max(best, token_f1(g, prediction));
  return best;
}

BestThreshold find_best_threshold(const std::vector<double>& raw_scores, const std::vector<double>& na_probs,
                                  const std::vector<bool>& has_answer, const std::vector<bool>& prediction_empty) {
  const size_t n = raw_scores.size();
  INCRELORA_CHECK(na_probs.size() == n && has_answer.size() == n && prediction_empty.size() == n,
                  "find_best_threshold: raw_scores, na_probs, has_answer and prediction_empty differ in length (", n,
                  ", ", na_probs.size(), ", ", has_answer.size(), ", ", prediction_empty.size(), ").");
  INCRELORA_CHECK(n > 0, "find_best_threshold: no questions.");
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return na_probs[a] < na_probs[b]; });
  double current = static_cast<double>(std::count(has_answer.begin(), has_answer.end(), false));
  BestThreshold best{current, 0.0};
  for (const size_t i : order) {
    current += has_answer[i] ? raw_scores[i] : (prediction_empty[i] ? 0.0 : -1.0);
    if (current > best.score) best = {current, na_probs[i]};
  }
  best.score = 100.0 * best.score / static_cast<double>(n);
  return best;
}

namespace {

struct RawScores {
  std::vector<double> exact, f1;
  std::vector<bool> has_answer, prediction_empty;
};

RawScores raw_scores(const std::vector<SquadExample>& examples, const std::map<std::string, std::string>& predictions) {
  INCRELORA_CHECK(!examples.empty(), "evaluate: no questions to score.");
  RawScores r;
  std::set<std::string> ids;
  std::vector<std::string> missing;
  for (const auto& e : examples) {
    INCRELORA_CHECK(ids.insert(e.id).second, "evaluate: the question id '", e.id, "' appears twice in the examples.");
    const auto it = predictions.find(e.id);
    if (it == predictions.end()) {
      missing.push_back(e.id);
      continue;
    }
    r.exact.push_back(max_exact_match(e.answer_texts, it->second));
    r.f1.push_back(max_token_f1(e.answer_texts, it->second));
    r.has_answer.push_back(!e.answer_texts.empty());
    r.prediction_empty.push_back(it->second.empty());
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < std::min<size_t>(missing.size(), 5); ++i) list += (i ? ", " : "") + missing[i];
    INCRELORA_CHECK(false, "evaluate: ", missing.size(), " of ", examples.size(), " questions have no prediction (",
                    list, missing.size() > 5 ? ", ..." : "", "); predict \"\" for no answer.");
  }
  return r;
}

void add_breakdown(Metrics& m, const std::string& prefix, const std::vector<double>& exact,
                   const std::vector<double>& f1, const std::vector<bool>& select, bool value) {
  double e = 0.0, f = 0.0;
  int64_t total = 0;
  for (size_t i = 0; i < exact.size(); ++i) {
    if (select[i] != value) continue;
    e += exact[i], f += f1[i], ++total;
  }
  if (total == 0) return;
  m[prefix + "exact"] = 100.0 * e / static_cast<double>(total);
  m[prefix + "f1"] = 100.0 * f / static_cast<double>(total);
  m[prefix + "total"] = static_cast<double>(total);
}

Metrics eval_dict(const std::vector<double>& exact, const std::vector<double>& f1, const std::vector<bool>& has) {
  Metrics m;
  add_breakdown(m, "", exact, f1, std::vector<bool>(exact.size(), true), true);
  add_breakdown(m, "HasAns_", exact, f1, has, true);
  add_breakdown(m, "NoAns_", exact, f1, has, false);
  return m;
}

}  // namespace

Metrics evaluate(const std::vector<SquadExample>& examples, const std::map<std::string, std::string>& predictions) {
  const auto r = raw_scores(examples, predictions);
  return eval_dict(r.exact, r.f1, r.has_answer);
}

Metrics evaluate(const std::vector<SquadExample>& examples, const std::map<std::string, std::string>& predictions,
                 const std::map<std::string, double>& na_probs, double na_prob_thresh) {
  const auto r = raw_scores(examples, predictions);
  std::vector<double> probs;
  probs.reserve(examples.size());
  for (const auto& e : examples) {
    const auto it = na_probs.find(e.id);
    INCRELORA_CHECK(it != na_probs.end(), "evaluate: the question '", e.id, "' has no no-answer score in na_probs; ",
                    "give one for every question (null_odds() of the decoded predictions).");
    INCRELORA_CHECK(!std::isnan(it->second), "evaluate: the no-answer score of question '", e.id, "' is NaN.");
    probs.push_back(it->second);
  }
  auto exact = r.exact, f1 = r.f1;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] > na_prob_thresh) exact[i] = f1[i] = r.has_answer[i] ? 0.0 : 1.0;
  }
  auto m = eval_dict(exact, f1, r.has_answer);
  const auto best_exact = find_best_threshold(r.exact, probs, r.has_answer, r.prediction_empty);
  const auto best_f1 = find_best_threshold(r.f1, probs, r.has_answer, r.prediction_empty);
  m["best_exact"] = best_exact.score;
  m["best_exact_thresh"] = best_exact.threshold;
  m["best_f1"] = best_f1.score;
  m["best_f1_thresh"] = best_f1.threshold;
  return m;
}

// ----- decoding ------------------------------------------------------------------------------------------

std::vector<ExamplePrediction> decode_predictions(const std::vector<SquadExample>& examples,
                                                  const std::vector<FeatureLogits>& features,
                                                  const DecodeOptions& options) {
  INCRELORA_CHECK(options.n_best_size > 0, "decode_predictions: n_best_size is ", options.n_best_size,
                  "; it must be at least 1 (run_qa uses 20).");
  INCRELORA_CHECK(options.max_answer_length > 0, "decode_predictions: max_answer_length is ",
                  options.max_answer_length, "; it must be at least 1 token (run_qa uses 30).");
  std::vector<std::vector<size_t>> features_of(examples.size());
  for (size_t f = 0; f < features.size(); ++f) {
    const auto& ft = features[f];
    INCRELORA_CHECK(ft.example_index >= 0 && ft.example_index < static_cast<int64_t>(examples.size()),
                    "decode_predictions: feature ", f, " has example_index ", ft.example_index, " but there are ",
                    examples.size(), " examples.");
    INCRELORA_CHECK(!ft.start_logits.empty() && ft.start_logits.size() == ft.end_logits.size() &&
                        ft.offsets.size() == ft.start_logits.size(),
                    "decode_predictions: feature ", f, " has ", ft.start_logits.size(), " start logits, ",
                    ft.end_logits.size(), " end logits and ", ft.offsets.size(),
                    " offsets; give one of each per token of the window, CLS first.");
    const auto& context = examples[static_cast<size_t>(ft.example_index)].context;
    const auto size = static_cast<int64_t>(context.size());
    const auto boundary = [&](int64_t b) {
      return b == size || !is_continuation(static_cast<unsigned char>(context[static_cast<size_t>(b)]));
    };
    for (size_t t = 0; t < ft.offsets.size(); ++t) {
      if (!ft.offsets[t]) continue;
      const auto [b0, b1] = *ft.offsets[t];
      INCRELORA_CHECK(0 <= b0 && b0 <= b1 && b1 <= size && boundary(b0) && boundary(b1), "decode_predictions: token ",
                      t, " of feature ", f, " has the byte range [", b0, ", ", b1, "), which is not a range of whole ",
                      "UTF-8 characters of the ", size, "-byte context of question '",
                      examples[static_cast<size_t>(ft.example_index)].id, "'.");
    }
    features_of[static_cast<size_t>(ft.example_index)].push_back(f);
  }

  std::vector<ExamplePrediction> out;
  out.reserve(examples.size());
  for (size_t x = 0; x < examples.size(); ++x) {
    const auto& example = examples[x];
    INCRELORA_CHECK(!features_of[x].empty(), "decode_predictions: question '", example.id,
                    "' has no feature; every example needs at least one window.");
    std::vector<Candidate> candidates;
    std::optional<Candidate> null;
    for (const size_t f : features_of[x]) {
      const auto& ft = features[f];
      const float null_score = ft.start_logits[0] + ft.end_logits[0];
      if (!null || null->score > null_score) {
        null = Candidate{0, 0, null_score, ft.start_logits[0], ft.end_logits[0], true};
      }
      const auto starts = top_indices(ft.start_logits, options.n_best_size);
      const auto ends = top_indices(ft.end_logits, options.n_best_size);
      for (const auto s : starts) {
        for (const auto e : ends) {
          const auto& so = ft.offsets[static_cast<size_t>(s)];
          const auto& eo = ft.offsets[static_cast<size_t>(e)];
          if (!so || !eo) continue;
          if (e < s || e - s + 1 > options.max_answer_length) continue;
          INCRELORA_CHECK(eo->second >= so->first, "decode_predictions: in feature ", f, " token ", e,
                          " ends before token ", s, " starts; the offsets must increase along the window.");
          const float start_logit = ft.start_logits[static_cast<size_t>(s)];
          const float end_logit = ft.end_logits[static_cast<size_t>(e)];
          candidates.push_back(
              Candidate{so->first, eo->second, start_logit + end_logit, start_logit, end_logit, false});
        }
      }
    }
    candidates.push_back(*null);
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
    if (static_cast<int64_t>(candidates.size()) > options.n_best_size) {
      candidates.resize(static_cast<size_t>(options.n_best_size));
    }
    if (std::none_of(candidates.begin(), candidates.end(), [](const Candidate& c) { return c.is_null; })) {
      candidates.push_back(*null);
    }

    ExamplePrediction p;
    p.id = example.id;
    p.null_score = null->score;
    for (const auto& c : candidates) {
      NbestEntry n;
      n.text = c.is_null ? std::string() : example.context.substr(static_cast<size_t>(c.byte_begin),
                                                                  static_cast<size_t>(c.byte_end - c.byte_begin));
      n.start_logit = c.start_logit, n.end_logit = c.end_logit, n.score = c.score;
      p.nbest.push_back(std::move(n));
    }
    if (std::all_of(p.nbest.begin(), p.nbest.end(), [](const NbestEntry& n) { return n.text.empty(); })) {
      // No non-null candidate in any window: run_qa puts a placeholder first so that there is a best answer.
      NbestEntry placeholder;
      placeholder.text = "empty";
      p.nbest.insert(p.nbest.begin(), placeholder);
    }
    float max_score = p.nbest[0].score;
    for (const auto& n : p.nbest) max_score = std::max(max_score, n.score);
    double total = 0.0;
    for (auto& n : p.nbest) total += n.probability = std::exp(static_cast<double>(n.score) - max_score);
    for (auto& n : p.nbest) n.probability /= total;

    const auto best = std::find_if(p.nbest.begin(), p.nbest.end(), [](const NbestEntry& n) { return !n.text.empty(); });
    const float diff = null->score - best->start_logit - best->end_logit;  // float32, as numpy computes it
    p.null_score_diff = static_cast<double>(diff);
    p.text = p.null_score_diff > options.null_score_diff_threshold ? std::string() : best->text;
    out.push_back(std::move(p));
  }
  return out;
}

std::map<std::string, std::string> prediction_texts(const std::vector<ExamplePrediction>& predictions) {
  std::map<std::string, std::string> m;
  for (const auto& p : predictions) m[p.id] = p.text;
  return m;
}

std::map<std::string, double> null_odds(const std::vector<ExamplePrediction>& predictions) {
  std::map<std::string, double> m;
  for (const auto& p : predictions) m[p.id] = p.null_score_diff;
  return m;
}

// ----- files ---------------------------------------------------------------------------------------------

void write_predictions_json(const std::string& path, const std::vector<ExamplePrediction>& predictions) {
  auto j = nlohmann::ordered_json::object();
  for (const auto& p : predictions) j[p.id] = p.text;
  write_whole(path, dump(j));
}

void write_null_odds_json(const std::string& path, const std::vector<ExamplePrediction>& predictions) {
  auto j = nlohmann::ordered_json::object();
  for (const auto& p : predictions) j[p.id] = p.null_score_diff;
  write_whole(path, dump(j));
}

void write_nbest_predictions_json(const std::string& path, const std::vector<ExamplePrediction>& predictions) {
  auto j = nlohmann::ordered_json::object();
  for (const auto& p : predictions) {
    auto list = nlohmann::ordered_json::array();
    for (const auto& n : p.nbest) {
      nlohmann::ordered_json entry;
      entry["start_logit"] = static_cast<double>(n.start_logit);
      entry["end_logit"] = static_cast<double>(n.end_logit);
      entry["text"] = n.text;
      entry["probability"] = n.probability;
      list.push_back(std::move(entry));
    }
    j[p.id] = std::move(list);
  }
  write_whole(path, dump(j));
}

void write_metrics_json(const std::string& path, const Metrics& metrics) {
  static const std::vector<std::string> order{"exact",       "f1",           "total",     "HasAns_exact",
                                              "HasAns_f1",   "HasAns_total", "NoAns_exact", "NoAns_f1",
                                              "NoAns_total", "best_exact",   "best_exact_thresh", "best_f1",
                                              "best_f1_thresh"};
  auto j = nlohmann::ordered_json::object();
  const auto put = [&](const std::string& key, double value) {
    const bool is_count = key.size() >= 5 && key.compare(key.size() - 5, 5, "total") == 0;
    if (is_count) {
      j[key] = static_cast<int64_t>(value);
    } else {
      j[key] = value;
    }
  };
  for (const auto& key : order)
    if (metrics.count(key)) put(key, metrics.at(key));
  for (const auto& [key, value] : metrics)
    if (std::find(order.begin(), order.end(), key) == order.end()) put(key, value);
  write_whole(path, dump(j, 2));
}

}  // namespace increlora::squad
