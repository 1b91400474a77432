#include <mambaquant/core/error.hpp>
#include <mambaquant/core/tensor.hpp>

#include <doctest/doctest.h>

#include <string>

TEST_CASE("require throws mq::error with the concatenated message") {
    CHECK_NOTHROW(mq::require(true, "never"));
    try {
        mq::require(false, "tensor 'x': expected ", 4, " rows, got ", 3);
        FAIL("no throw");
    } catch (const mq::error& e) {
        CHECK(std::string(e.what()) == "tensor 'x': expected 4 rows, got 3");
    }
}

TEST_CASE("result carries a value or the error message") {
    auto good = mq::try_invoke([] { return 5; });
    REQUIRE(good.ok());
    CHECK(good.value() == 5);
    auto bad = mq::try_invoke([]() -> int { mq::fail("bad scale ", 0.0); });
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.message() == "bad scale 0");
}

TEST_CASE("MatrixView: rows, strides, Eigen interop and shape checks") {
    mq::MatrixXf m(3, 4);
    for (int i = 0; i < 12; ++i) m.data()[i] = float(i);
    auto v = mq::view(m);
    CHECK(v.rows == 3);
    CHECK(v.cols == 4);
    CHECK(v.contiguous());
    CHECK(v(2, 1) == 9.0f);
    CHECK(v.row(1)[3] == 7.0f);
    auto block = v.row_block(1, 2);
    CHECK(block(0, 0) == 4.0f);
    mq::ConstMatrixView<float> cv = v;
    CHECK(mq::as_eigen(cv).sum() == doctest::Approx(66.0));
    mq::MatrixView<float> strided(m.data(), 3, 2, 4);
    CHECK(mq::as_eigen(strided)(2, 1) == 9.0f);
    CHECK_THROWS_WITH_AS(mq::require_shape(cv, 3, 5, "W_in"), "W_in: expected shape [3 x 5], got [3 x 4]", mq::error);
}
